"""The MindSpore-style functions: save_checkpoint, load_checkpoint, load_param_into_net.

A thin facade over the file layer (torchresume.files): it validates the
MindSpore-style arguments and hands the bytes work down.

``save_checkpoint`` accepts a module, an optimizer, a dict of tensors, a list
of {"name", "data"} dicts, any object with ``state_dict()``, or a nested
training state. ``load_checkpoint`` returns a flat ``name -> tensor/scalar``
dict (model parameters under their state_dict names) and
``load_param_into_net`` puts such a dict into a module or an optimizer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from torchresume.files import encode_state, read_checkpoint, write_encoded
from torchresume.format import crypto
from torchresume.save_slot import SaveSlot
from torchresume.state.loading import load_param_into_net
from torchresume.state.tree import flat_view

_APPEND_TYPES = (bool, int, float, str)
# Async saves go through ONE module-level save slot, whose staging buffers are reused across calls.
# Why one, not one per destination path: the usual loop saves each epoch to a new file name
# ("net_3.ckpt"), so per-path buffers would never be reused and would pile up (one copy of the
# state per file ever saved). One slot holds one copy, the size of the last state saved; two
# different models saved alternately reallocate it on each save, one model saved repeatedly
# never does. The buffers hold the snapshot until its background write finished, so a save
# first waits for the previous one (at most one in flight), and the lock keeps two threads from
# staging into the same buffers at once.
_slot = SaveSlot(async_save=True)
_slot_lock = threading.Lock()


def wait_async_saves() -> None:
    """Wait for background saves started with ``async_save=True``; re-raise their errors.

    Example:
        ```python
        tr.save_checkpoint(net, "bg.ckpt", async_save=True)
        tr.wait_async_saves()
        ```
    """
    _slot.wait()


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


def _choose(tree: Any, choice_func: Callable[[str], bool]) -> Any:
    if isinstance(tree, dict) and all(isinstance(v, torch.Tensor) for v in tree.values()):
        return {k: v for k, v in tree.items() if choice_func(k)}
    raise ValueError("choice_func applies to flat tensor dicts and modules; for nested state, "
                     "filter the dict before saving")


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
    accepts. With ``async_save`` the state is copied now (into host buffers reused
    across calls while the tensors' shapes and dtypes hold) and written in the
    background; an async save first waits for the previous one, whose buffers it
    reuses. A failure is raised on the next save or by ``wait_async_saves()``.

    Example:
        ```python
        tr.save_checkpoint(net, "net.ckpt", append_dict={"epoch_num": 3})
        tr.save_checkpoint(net, "net-ms.ckpt", format="ckpt", crc_check=True)   # for MindSpore
        tr.save_checkpoint(net, "net-async.ckpt", async_save=True)
        tr.wait_async_saves()
        ```
    """
    del integrated_save  # single-process save
    if format not in (None, "safetensors", "torchresume", "ckpt"):
        raise ValueError(f"format={format!r} is not supported; use 'safetensors' (the default) "
                         "or 'ckpt' (MindSpore protobuf)")
    if not isinstance(ckpt_file_name, str) or not ckpt_file_name:
        raise TypeError(f"ckpt_file_name must be a non-empty str, got {ckpt_file_name!r}")
    if format == "ckpt":  # MindSpore protobuf: mindspore_io owns it
        from torchresume.files import mindspore_io
        return mindspore_io.save(save_obj, ckpt_file_name, append_dict=check_append_dict(append_dict),
                                 enc_key=enc_key, enc_mode=enc_mode, crc_check=crc_check,
                                 choice_func=choice_func)
    key = crypto.check_key(enc_key, enc_mode, "enc_key") if enc_key is not None else None
    append = check_append_dict(append_dict)
    kind, tree = state_of(save_obj)
    if choice_func is not None:
        tree = _choose(tree, choice_func)
    if async_save:
        with _slot_lock:
            _slot.claim(ckpt_file_name, "wait")  # re-raises a failed earlier save
            _slot.run(ckpt_file_name, tree, lambda snapshot, _: write_encoded(
                encode_state(kind, snapshot, append=append), ckpt_file_name, key))
        return
    _slot.raise_if_failed()
    write_encoded(encode_state(kind, tree, append=append),
                  ckpt_file_name, key)


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

    Example:
        ```python
        tr.save_checkpoint(net, "net.ckpt", append_dict={"epoch_num": 3})
        params = tr.load_checkpoint("net.ckpt", filter_prefix="fc3.")   # without the last layer
        assert "fc3.weight" not in params and params["epoch_num"] == 3
        ```
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


