"""Read any supported checkpoint file into a state tree, choosing the format by content.

Supported: the native format (and encrypted native files), plain safetensors
files, MindSpore .ckpt files (mindspore_io), and torch.save files through
``torch.load(weights_only=True)`` only.
Nothing here runs pickle's arbitrary-code path or trusts a size from the file
before checking it against the file's real size.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import torch
import xxhash

from torchresume.errors import (
    CorruptCheckpointError,
    DecryptionError,
    UnsafeCheckpointError,
    UnsupportedFormatError,
)
from torchresume.format import crypto, mindspore_crypto, native
from torchresume.format.detect import HEAD_BYTES, Kind, detect
from torchresume.state.tree import unflatten


@dataclass
class Checkpoint:
    """What a file held: the kind of state, the state tree, and the file's metadata."""

    kind: str
    tree: Any
    format: str
    meta: dict[str, Any] = field(default_factory=dict)
    encrypted: bool = False

    @property
    def info(self) -> dict[str, Any]:
        return dict(self.meta.get("info", {}))

    @property
    def append(self) -> dict[str, Any]:
        return dict(self.meta.get("append", {}))


def read(f: BinaryIO, size: int, where: str, *, dec_key: bytes | None = None,
         verify: bool = True, header_xxh3: str | None = None) -> Checkpoint:
    """Load the whole checkpoint in ``f`` (``size`` bytes long).

    ``header_xxh3``: the digest a directory manifest recorded for this part's header.
    """
    first, kind = _detect(f, size, where)
    if kind is Kind.MINDSPORE:
        from torchresume.format import mindspore_load
        entries, encrypted = mindspore_load.load(f, size, where, dec_key=dec_key, verify=verify)
        meta = mindspore_load.run_meta(entries, where)
        return Checkpoint("tensors", entries, mindspore_load.FORMAT, meta, encrypted=encrypted)
    if kind is Kind.ENCRYPTED:
        plain = crypto.decrypt(f.read(), dec_key, where)
        inner = read(io.BytesIO(plain), len(plain), where, verify=verify, header_xxh3=header_xxh3)
        inner.encrypted = True
        return inner
    if dec_key is not None:
        raise DecryptionError(f"{where}: dec_key was given but the file is not encrypted; "
                              "drop dec_key")
    if kind in (Kind.TORCH_ZIP, Kind.TORCH_PICKLE):
        return Checkpoint("torch", _torch_load(f, where), kind.value)
    if kind is Kind.SAFETENSORS:
        header = native.read_header(f, size, where)
        if header_xxh3 is not None:
            _check_header_digest(f, header, header_xxh3, where)
        tensors = native.read_tensors(f, header, where, verify=verify)
        if header.meta is None:
            return Checkpoint("tensors", tensors, "safetensors")
        return Checkpoint(header.kind, _rebuild(header.meta, tensors, where), "torchresume",
                          header.meta)
    raise UnsupportedFormatError(
        f"{where}: not a checkpoint torchresume can read (starts with {first[:8].hex()}); "
        "expected a torchresume/safetensors file, a MindSpore .ckpt or a torch.save .pt/.pth file")


def _check_header_digest(f: BinaryIO, header: native.Header, expected: str, where: str) -> None:
    f.seek(0)
    if xxhash.xxh3_64_hexdigest(f.read(header.data_start)) != expected:
        raise CorruptCheckpointError(f"{where}: header differs from the one the manifest recorded; "
                                     "the part was replaced or damaged")


def read_header(f: BinaryIO, size: int, where: str) -> tuple[str, native.Header | None,
                                                               dict[str, Any]]:
    """Read only what describes the file: (format, header or None, extra facts).

    Costs one small read for native and safetensors files, whatever their size.
    """
    first, kind = _detect(f, size, where)
    if kind is Kind.MINDSPORE and mindspore_crypto.mode_of(first):
        return "encrypted", None, {"encrypted": True, "plain_size": None,
                                   "mode": f"{mindspore_crypto.mode_of(first)} (MindSpore)"}
    if kind is Kind.MINDSPORE:
        return "mindspore", None, {}
    if kind is Kind.ENCRYPTED:
        meta = crypto.parse_header(f.read(4096), where)
        return "encrypted", None, {"encrypted": True, "mode": meta["mode"],
                                   "plain_size": meta["plain_size"]}
    if kind is Kind.SAFETENSORS:
        header = native.read_header(f, size, where)
        return ("torchresume" if header.meta else "safetensors"), header, {}
    if kind in (Kind.TORCH_ZIP, Kind.TORCH_PICKLE):
        return kind.value, None, {}
    raise UnsupportedFormatError(f"{where}: not a checkpoint torchresume can read "
                                 f"(starts with {first[:8].hex()})")


def _detect(f: BinaryIO, size: int, where: str) -> tuple[bytes, Kind]:
    """The first bytes and the format; empty and tiny files are errors here."""
    first = f.read(HEAD_BYTES)
    f.seek(0)
    kind = detect(first, size)
    if kind is Kind.EMPTY:
        raise CorruptCheckpointError(f"{where}: the file is empty (0 bytes): a write was "
                                     "interrupted; delete it and use an older checkpoint")
    if kind is Kind.TINY:
        raise CorruptCheckpointError(f"{where}: truncated: the file has only {size} bytes, "
                                     "too few for any checkpoint")
    return first, kind


def _rebuild(meta: dict[str, Any], tensors: dict[str, torch.Tensor], where: str) -> Any:
    try:
        return unflatten(meta["skeleton"], tensors)
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise CorruptCheckpointError(f"{where}: the state skeleton is damaged ({exc!r})") from None


def _torch_load(f: BinaryIO, where: str) -> Any:
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc) or "Weights only" in str(exc):
            raise UnsafeCheckpointError(
                f"{where}: refused: the file's pickle asks to run code or build "
                "objects other than tensors and plain containers; torchresume only loads "
                "weights (re-save it as a state_dict, or convert it where you trust it)") from None
        raise CorruptCheckpointError(f"{where}: damaged torch file ({exc})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError,
            IndexError, TypeError, AttributeError, MemoryError) as exc:
        raise CorruptCheckpointError(f"{where}: damaged torch file "
                                     f"({type(exc).__name__}: {str(exc)[:200]})") from None
