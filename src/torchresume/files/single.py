"""Encode, write, read, describe and verify one checkpoint, whatever its layout.

A checkpoint is either one file (native, safetensors, torch, or encrypted) or
a directory of native part files committed by a manifest (files/directory.py);
``read_checkpoint``, ``describe`` and ``verify`` accept both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from torchresume.errors import CorruptCheckpointError, TorchResumeError
from torchresume.files import directory, sharded, sharded_as_one
from torchresume.files.encoding import Description, encode_state, scalars, tensor_rows, write_encoded
from torchresume.format import crypto, native, reader
from torchresume.format.reader import Checkpoint
from torchresume.state.tree import flat_view
from torchresume.storage import resolve

CHECKPOINT_SUFFIXES = (".ckpt", ".safetensors", ".pt", ".pth", ".bin")


def encode_weights(tree: Any, source: str = "the checkpoint") -> native.Encoded:
    """The model's weights of ``tree`` as a plain safetensors file (no torchresume metadata): what
    ``transformers``' ``from_pretrained`` and the Hub read as ``model.safetensors``.

    A training state's own sub-trees (optimizer, rng, ...) are left out; a weight that is not a
    tensor is a CorruptCheckpointError naming it.
    """
    from torchresume.state.train_state import is_training_part
    weights = {k: v for k, v in flat_view(tree).items() if not is_training_part(k)}
    odd = [k for k, v in weights.items() if not isinstance(v, torch.Tensor)]
    if odd or not weights:
        raise CorruptCheckpointError(f"{source} holds no model weights to export" if not weights else
                                     f"{source}: {odd[0]!r} is not a tensor; only tensors go into a "
                                     "safetensors file")
    return native.encode({n: native.prepare(t, n) for n, t in weights.items()}, None)


def write_checkpoint(path: str, kind: str, tree: Any, *, info: dict[str, Any] | None = None,
                     append: dict[str, Any] | None = None, enc_key: bytes | None = None) -> int:
    """Encode ``tree`` and write it durably and atomically to ``path``; returns the bytes written."""
    return write_encoded(encode_state(kind, tree, info=info, append=append), path, enc_key)


def read_checkpoint(path: str, *, dec_key: bytes | None = None, dec_mode: str = "AES-GCM",
                    verify: bool = True) -> Checkpoint:
    """The whole checkpoint at ``path`` (any supported format or a directory) as a state tree."""
    if not isinstance(path, str) or not path:
        raise TypeError(f"ckpt_file_name must be a non-empty str, got {path!r}")
    from torchresume.format import mindspore_crypto  # MindSpore files may be AES-CBC too
    check = mindspore_crypto.check_key if dec_mode == "AES-CBC" else crypto.check_key
    key = check(dec_key, dec_mode, "dec_key") if dec_key is not None else None
    storage, where = resolve(path)
    if storage.isdir(where):
        doc = directory.read_manifest(path)
        if sharded.is_sharded(doc):
            return _read_sharded(path, doc, key, verify)
        return directory.read(path, dec_key=key, verify=verify)
    f, size = storage.open_read(where)
    with f:
        return reader.read(f, size, path, dec_key=key, verify=verify)


def _read_sharded(path: str, doc: dict[str, Any], dec_key: bytes | None, verify: bool) -> Checkpoint:
    """Sharded checkpoint ``path`` consolidated by DCP's planner, laid out as a one-process file."""
    from torchresume.files.consolidate import consolidate  # loads torch.distributed.checkpoint
    state, info = consolidate(path, dec_key=dec_key, verify=verify)
    return sharded_as_one.checkpoint(path, state, info, doc)


@dataclass
class Verdict:
    """The outcome of verifying one checkpoint."""

    path: str
    valid: bool
    reason: str = ""


def describe(path: str, dec_key: bytes | None = None) -> Description:
    """Header-level description; reads only headers of native/safetensors files (and a manifest).

    An encrypted file is described by its envelope, or with ``dec_key`` by what it holds
    (decrypted whole).
    """
    storage, where = resolve(path)
    if storage.isdir(where):
        return directory.describe(path)
    f, size = storage.open_header(where)
    with f:
        fmt, header, extra = reader.read_header(f, size, path)
    desc = Description(path, size, fmt, encrypted=bool(extra.get("encrypted")))
    if header is not None:
        desc.kind = header.kind
        desc.tensors = tensor_rows(header)
        if header.meta:
            desc.info = dict(header.meta.get("info", {}))
            desc.append = dict(header.meta.get("append", {}))
            desc.values = scalars(header.meta.get("skeleton"))
        return desc
    if fmt == "encrypted" and dec_key is not None:
        mode = str(extra.get("mode", "AES-GCM")).split()[0]
        ckpt = read_checkpoint(path, dec_key=dec_key, dec_mode=mode)
        desc.format, desc.kind = ckpt.format, ckpt.kind
        desc.info, desc.append = ckpt.info, ckpt.append
        _describe_tree(desc, ckpt.tree)
        return desc
    if fmt == "encrypted":
        desc.kind = "encrypted"
        desc.info = {"mode": extra["mode"], "plain_size": extra["plain_size"]}
        return desc
    ckpt = read_checkpoint(path)  # torch files have no separate header
    desc.kind, desc.info = ckpt.kind, ckpt.info  # a MindSpore file torchresume wrote carries its info
    _describe_tree(desc, ckpt.tree)
    return desc


def _describe_tree(desc: Description, tree: Any) -> None:
    flat = flat_view(tree)
    desc.tensors = [{"name": k, "dtype": str(v.dtype).replace("torch.", ""),
                     "shape": list(v.shape), "bytes": v.numel() * v.element_size()}
                    for k, v in flat.items() if isinstance(v, torch.Tensor)]
    desc.values = {k: v for k, v in flat.items() if not isinstance(v, torch.Tensor)}


def verify(path: str, dec_key: bytes | None = None) -> Verdict:
    """Read the whole checkpoint and check every checksum; never raises for a bad one."""
    try:
        read_checkpoint(path, dec_key=dec_key)
    except TorchResumeError as exc:
        return Verdict(path, False, str(exc))
    except (OSError, ValueError) as exc:
        return Verdict(path, False, f"{path}: {exc}")
    return Verdict(path, True)
