"""The MindSpore-style functions: save_checkpoint, load_checkpoint, load_param_into_net.

``save_checkpoint`` accepts a module, an optimizer, a dict of tensors, a list
of {"name", "data"} dicts, any object with ``state_dict()``, or a nested
training state. ``load_checkpoint`` returns a flat ``name -> tensor/scalar``
dict (model parameters under their state_dict names) and
``load_param_into_net`` puts such a dict into a module or an optimizer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from torchresume.async_writer import AsyncWriter
from torchresume.errors import StateMismatchError
from torchresume.format import crypto, native, reader
from torchresume.state.train_state import is_training_part
from torchresume.state.tree import flat_view, flatten, map_tensors
from torchresume.storage import resolve

_APPEND_TYPES = (bool, int, float, str)
_writer: AsyncWriter | None = None


def _async_writer() -> AsyncWriter:
    global _writer
    if _writer is None:
        _writer = AsyncWriter()
    return _writer


def wait_async_saves() -> None:
    """Wait for background saves started with ``async_save=True``; re-raise their errors."""
    if _writer is not None:
        _writer.wait()


def state_of(save_obj: Any) -> tuple[str, Any]:
    """(kind, state tree) of anything save_checkpoint accepts."""
    if isinstance(save_obj, nn.Module):
        return "model", dict(save_obj.state_dict())
    if isinstance(save_obj, torch.optim.Optimizer):
        return "optimizer", save_obj.state_dict()
    if isinstance(save_obj, list) and all(isinstance(x, dict) and {"name", "data"} <= set(x)
                                          for x in save_obj):
        return "tensors", {x["name"]: x["data"] for x in save_obj}
    if isinstance(save_obj, dict):
        if save_obj and all(isinstance(v, torch.Tensor) for v in save_obj.values()):
            return "tensors", dict(save_obj)
        return "state", save_obj
    if hasattr(save_obj, "state_dict"):
        return "stateful", save_obj.state_dict()
    raise TypeError(f"save_obj must be an nn.Module, an optimizer, a dict or an object with "
                    f"state_dict(), got {type(save_obj).__name__}")


def check_append_dict(append_dict: dict[str, Any] | None) -> dict[str, Any]:
    if append_dict is None:
        return {}
    if not isinstance(append_dict, dict):
        raise TypeError(f"append_dict must be a dict, got {type(append_dict).__name__}")
    for key, value in append_dict.items():
        if not isinstance(key, str):
            raise TypeError(f"append_dict keys must be str, got {key!r}")
        if not isinstance(value, _APPEND_TYPES):
            raise TypeError(f"append_dict[{key!r}] is a {type(value).__name__}; values must be "
                            "int, float, bool or str")
    return dict(append_dict)


def encode_state(kind: str, tree: Any, *, info: dict[str, Any] | None = None,
                 append: dict[str, Any] | None = None) -> native.Encoded:
    """Flatten ``tree`` and lay it out as a native checkpoint (tensors moved to CPU)."""
    tensors, skeleton = flatten(tree)
    prepared = {n: native.prepare(t, n) for n, t in tensors.items()}
    meta = {"kind": kind, "skeleton": skeleton, "info": info or {}, "append": append or {}}
    return native.encode(prepared, meta)


def _choose(tree: Any, choice_func: Callable[[str], bool]) -> Any:
    if isinstance(tree, dict) and all(isinstance(v, torch.Tensor) for v in tree.values()):
        return {k: v for k, v in tree.items() if choice_func(k)}
    raise ValueError("choice_func applies to flat tensor dicts and modules; for nested state, "
                     "filter the dict before saving")


def write_encoded(encoded: native.Encoded, path: str, enc_key: bytes | None) -> None:
    storage, where = resolve(path)
    parts: Iterable[Any] = encoded.parts()
    if enc_key is not None:
        parts = crypto.encrypt(b"".join(encoded.parts()), enc_key)
    storage.write_atomic(where, parts)


def save_checkpoint(save_obj: Any, ckpt_file_name: str, *, integrated_save: bool = True,
                    async_save: bool = False, append_dict: dict[str, Any] | None = None,
                    enc_key: bytes | None = None, enc_mode: str = "AES-GCM",
                    choice_func: Callable[[str], bool] | None = None,
                    crc_check: bool = False, format: str | None = None) -> None:
    """Save ``save_obj`` to ``ckpt_file_name`` durably and atomically.

    The file is a safetensors file with torchresume metadata and per-tensor
    xxh3 checksums (always written). ``format="ckpt"`` writes MindSpore's
    protobuf .ckpt instead (``crc_check`` adds its CRC32 footer; ``enc_mode``
    may be AES-GCM or AES-CBC); see ``mindspore_io.entries_of`` for what it
    accepts. With ``async_save`` the state is copied now and written in the
    background; a failure is raised on the next save or by ``wait_async_saves()``.
    """
    del integrated_save  # single-process save
    if format not in (None, "safetensors", "torchresume", "ckpt"):
        raise ValueError(f"format={format!r} is not supported; use 'safetensors' (the default) "
                         "or 'ckpt' (MindSpore protobuf)")
    if not isinstance(ckpt_file_name, str) or not ckpt_file_name:
        raise TypeError(f"ckpt_file_name must be a non-empty str, got {ckpt_file_name!r}")
    if format == "ckpt":  # MindSpore protobuf: mindspore_io owns it
        from torchresume import mindspore_io
        return mindspore_io.save(save_obj, ckpt_file_name, append_dict=check_append_dict(append_dict),
                                 enc_key=enc_key, enc_mode=enc_mode, crc_check=crc_check,
                                 choice_func=choice_func)
    key = crypto.check_key(enc_key, enc_mode, "enc_key") if enc_key is not None else None
    append = check_append_dict(append_dict)
    kind, tree = state_of(save_obj)
    if choice_func is not None:
        tree = _choose(tree, choice_func)
    if async_save:
        # Snapshot now: training goes on mutating the parameters while we write.
        tree = map_tensors(tree, lambda t: t.detach().to("cpu", copy=True))
        encoded = encode_state(kind, tree, append=append)
        _async_writer().submit(lambda: write_encoded(encoded, ckpt_file_name, key),
                               ckpt_file_name)
        return
    if _writer is not None:
        _writer.raise_if_failed()
    write_encoded(encode_state(kind, tree, append=append),
                  ckpt_file_name, key)


def read_checkpoint(path: str, *, dec_key: bytes | None = None, dec_mode: str = "AES-GCM",
                    verify: bool = True) -> reader.Checkpoint:
    """The whole checkpoint at ``path`` (any supported format) as a state tree."""
    if not isinstance(path, str) or not path:
        raise TypeError(f"ckpt_file_name must be a non-empty str, got {path!r}")
    from torchresume.format import mindspore_crypto  # MindSpore files may be AES-CBC too
    check = mindspore_crypto.check_key if dec_mode == "AES-CBC" else crypto.check_key
    key = check(dec_key, dec_mode, "dec_key") if dec_key is not None else None
    storage, where = resolve(path)
    f, size = storage.open_read(where)
    with f:
        return reader.read(f, size, path, dec_key=key, verify=verify)


def _prefixes(value: str | Iterable[str] | None, arg: str) -> tuple[str, ...]:
    if value is None:
        return ()
    items = (value,) if isinstance(value, str) else tuple(value)
    if not items or not all(isinstance(p, str) and p for p in items):
        raise TypeError(f"{arg} must be a non-empty str or a list of them, got {value!r}")
    return items


def load_checkpoint(ckpt_file_name: str, net: nn.Module | None = None, *,
                    strict_load: bool = False,
                    filter_prefix: str | Iterable[str] | None = None,
                    dec_key: bytes | None = None, dec_mode: str = "AES-GCM",
                    specify_prefix: str | Iterable[str] | None = None,
                    choice_func: Callable[[str], bool] | None = None,
                    crc_check: bool = True, format: str | None = None) -> dict[str, Any]:
    """Load a checkpoint into a flat ``name -> tensor/scalar/str`` dict (and into ``net``).

    ``filter_prefix`` drops names starting with any prefix, ``specify_prefix``
    keeps only those, ``choice_func(name)`` keeps names it returns True for.
    Checksums are verified (``crc_check=False`` skips that). The format is
    detected from the bytes; ``format`` is accepted for MindSpore compatibility.
    """
    del format
    skip = _prefixes(filter_prefix, "filter_prefix")
    only = _prefixes(specify_prefix, "specify_prefix")
    ckpt = read_checkpoint(ckpt_file_name, dec_key=dec_key, dec_mode=dec_mode, verify=crc_check)
    flat = {**flat_view(ckpt.tree), **ckpt.append}
    out = {k: v for k, v in flat.items()
           if not (skip and k.startswith(skip)) and not (only and not k.startswith(only))
           and (choice_func is None or choice_func(k))}
    if not out:
        raise ValueError(f"{ckpt_file_name}: nothing left to load after filter_prefix/"
                         "specify_prefix/choice_func; check the prefixes against "
                         f"`torchresume inspect {ckpt_file_name}`")
    if net is not None:
        load_param_into_net(net, out, strict_load=strict_load)
    return out


def load_param_into_net(net: nn.Module | torch.optim.Optimizer, parameter_dict: dict[str, Any],
                        strict_load: bool = False) -> tuple[list[str], list[str]]:
    """Load ``parameter_dict`` into a module or an optimizer.

    Returns ``(param_not_load, ckpt_not_load)``: names the target has but the
    dict did not fill, and tensor names in the dict the target did not use.
    Non-strict loading casts float<->float and int<->int and skips (reporting)
    shape mismatches; strict loading raises StateMismatchError listing every
    difference. Nothing is modified unless the whole load can succeed.
    """
    if not isinstance(parameter_dict, dict):
        raise TypeError(f"parameter_dict must be a dict, got {type(parameter_dict).__name__}")
    from torchresume.format import name_mapping  # MindSpore names -> torch names
    if isinstance(net, torch.optim.Optimizer):
        from torchresume.state.optim import load_into_optimizer
        parameter_dict = name_mapping.optimizer_from_mindspore(net, parameter_dict)
        return load_into_optimizer(net, parameter_dict, strict_load)
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be an nn.Module or a torch.optim.Optimizer, got "
                        f"{type(net).__name__}")
    return _load_into_module(net, name_mapping.to_torch_names(net, parameter_dict), strict_load)


def _compatible(dst: torch.dtype, src: torch.dtype) -> bool:
    if dst == src:
        return True
    return (dst.is_floating_point and src.is_floating_point) or (
        not dst.is_floating_point and not src.is_floating_point and not dst.is_complex
        and dst != torch.bool and src != torch.bool)


def _load_into_module(net: nn.Module, params: dict[str, Any],
                      strict: bool) -> tuple[list[str], list[str]]:
    own = net.state_dict(keep_vars=True)
    missing: list[str] = []
    mismatched: list[str] = []
    plan: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    for name, target in own.items():
        value = params.get(name)
        if not isinstance(value, torch.Tensor):
            missing.append(name)
        elif tuple(value.shape) != tuple(target.shape):
            mismatched.append(f"{name}: checkpoint {tuple(value.shape)} vs net {tuple(target.shape)}")
        elif not _compatible(target.dtype, value.dtype) or (strict and target.dtype != value.dtype):
            mismatched.append(f"{name}: checkpoint {value.dtype} vs net {target.dtype}")
        else:
            plan.append((name, target, value))
    used = {name for name, _, _ in plan}
    unexpected = [k for k, v in params.items()
                  if isinstance(v, torch.Tensor) and k not in used and not is_training_part(k)]
    if strict and (missing or mismatched or unexpected):
        raise StateMismatchError(_mismatch_message(missing, unexpected, mismatched))
    with torch.no_grad():
        for _, target, value in plan:
            target.copy_(value)
    if mismatched:
        import warnings
        warnings.warn("skipped parameters that do not match: " + "; ".join(mismatched),
                      stacklevel=3)
    not_loaded = missing + [m.split(":", 1)[0] for m in mismatched]
    return not_loaded, unexpected


def _mismatch_message(missing: list[str], unexpected: list[str], mismatched: list[str]) -> str:
    lines = ["strict load failed; nothing was loaded:"]
    if missing:
        lines.append(f"  missing from checkpoint ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        lines.append(f"  not in the network ({len(unexpected)}): {', '.join(unexpected)}")
    if mismatched:
        lines.append(f"  mismatched ({len(mismatched)}): {'; '.join(mismatched)}")
    lines.append("  use strict_load=False to load what matches (fine-tuning), or fix the names")
    return "\n".join(lines)


