"""MindSpore ``.ckpt`` files in and out: the glue between the codec and the rest.

- ``load``: a file already detected as MindSpore (plain or encrypted) ->
  ``name -> tensor | str`` under MindSpore's own names, as MindSpore's
  ``load_checkpoint`` returns them.
- ``entries_of``: what ``save_checkpoint(..., format="ckpt")`` accepts
  (a module, a ``(module, optimizer)`` pair, a flat dict of tensors, a list of
  {"name", "data"} dicts, a torchresume training state) -> MindSpore-named entries.
- ``save``: entries -> bytes (optional CRC footer, AES-GCM/AES-CBC) -> a
  durable, atomic write through the storage layer.

The hooks in api.py, format/reader.py, cli/files.py and manager.py call only
these functions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from torchresume.format import mindspore, mindspore_crypto, name_mapping
from torchresume.format.mindspore_load import FORMAT, RUN_ENTRY
from torchresume.log import log
from torchresume.state.train_state import RESERVED


def _module_entries(net: nn.Module) -> tuple[dict[str, Any], dict[str, str | None]]:
    names = name_mapping.module_names(net)
    state = net.state_dict()
    return {ms: state[t] for t, ms in names.items() if ms is not None}, names


def _pair_entries(net: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    out, names = _module_entries(net)
    by_id = {id(p): n for n, p in net.named_parameters()}
    params = []
    for group in opt.param_groups:
        for p in group["params"]:
            if id(p) not in by_id:
                raise ValueError("the optimizer holds a parameter that is not in the network; "
                                 "save the network the optimizer was built for")
            ms_name = names[by_id[id(p)]]
            assert ms_name is not None
            params.append((ms_name, p.detach()))
    out.update(name_mapping.optimizer_to_mindspore(opt.state_dict(), params))
    return out


def _tree_entries(tree: dict[str, Any], global_step: int | None = None) -> dict[str, Any]:
    """A torchresume training state (model at top level, ``optimizer`` beside it)."""
    model = {k: v for k, v in tree.items() if k.split(".", 1)[0] not in RESERVED}
    flat_model: dict[str, Any] = {}
    from torchresume.state.tree import flat_view
    for k, v in flat_view(model).items():
        flat_model[k] = v
    names = name_mapping.tree_names(list(flat_model))
    out = {ms: flat_model[t] for t, ms in names.items() if ms is not None}
    opt_state = tree.get("optimizer")
    if isinstance(opt_state, dict) and "param_groups" in opt_state:
        buffers = ("running_mean", "running_var", "num_batches_tracked")
        params = [(ms, flat_model[t]) for t, ms in names.items()
                  if ms is not None and isinstance(flat_model[t], torch.Tensor)
                  and t.rpartition(".")[2] not in buffers]
        out.update(name_mapping.optimizer_to_mindspore(opt_state, params, global_step))
    return out


def entries_of(save_obj: Any, *, global_step: int | None = None) -> dict[str, Any]:
    """MindSpore-named entries of anything ``save_checkpoint(format="ckpt")`` accepts."""
    if isinstance(save_obj, nn.Module):
        return _module_entries(save_obj)[0]
    if (isinstance(save_obj, tuple) and len(save_obj) == 2 and isinstance(save_obj[0], nn.Module)
            and isinstance(save_obj[1], torch.optim.Optimizer)):
        return _pair_entries(*save_obj)
    if isinstance(save_obj, list) and all(isinstance(x, dict) and {"name", "data"} <= set(x)
                                          for x in save_obj):
        return {x["name"]: x["data"] for x in save_obj}
    if isinstance(save_obj, dict):
        if all(isinstance(v, (torch.Tensor, str)) for v in save_obj.values()):
            return dict(save_obj)
        return _tree_entries(save_obj, global_step)
    raise TypeError("with format='ckpt', save_obj must be an nn.Module, a (module, optimizer) "
                    f"pair, a dict of tensors or a training state, got {type(save_obj).__name__}")


def encode(entries: dict[str, Any], *, append: dict[str, Any] | None = None,
           crc_check: bool = False, enc_key: bytes | None = None,
           enc_mode: str = "AES-GCM") -> list[Any]:
    """The file's bytes as parts; tensors' memory is not copied unless encrypting."""
    if enc_key is not None and crc_check:
        raise ValueError("crc_check=True together with enc_key writes a file MindSpore cannot "
                         "load back; drop crc_check (the AES-GCM tag already detects any change)")
    parts = mindspore.encode({**entries, **(append or {})}, crc_check=crc_check)
    if enc_key is not None:
        key = mindspore_crypto.check_key(enc_key, enc_mode)
        return list(mindspore_crypto.encrypt(parts, key, enc_mode))
    return parts


def run_entry(info: dict[str, Any]) -> dict[str, str]:
    """The entry that marks a MindSpore file as a checkpoint of a torchresume run (its ``info``)."""
    import json
    return {RUN_ENTRY: json.dumps(info)}


def save(save_obj: Any, path: str, *, append_dict: dict[str, Any] | None = None,
         enc_key: bytes | None = None, enc_mode: str = "AES-GCM", crc_check: bool = False,
         choice_func: Callable[[str], bool] | None = None) -> None:
    """``save_checkpoint(..., format="ckpt")``: a MindSpore file, written durably and atomically."""
    if enc_key is not None:
        mindspore_crypto.check_key(enc_key, enc_mode)
    entries = entries_of(save_obj)
    if choice_func is not None:
        entries = {k: v for k, v in entries.items() if choice_func(k)}
    write(path, encode(entries, append=append_dict, crc_check=crc_check, enc_key=enc_key,
                       enc_mode=enc_mode))


def write(path: str, parts: list[Any]) -> None:
    from torchresume.storage import resolve
    storage, where = resolve(path)
    storage.write_atomic(where, parts)


class Parts:
    """Bytes ready to write, in the shape the native writer's callers expect (``parts()``)."""

    def __init__(self, parts: list[Any]) -> None:
        self._parts = parts

    def parts(self) -> list[Any]:
        return self._parts

    @property
    def size(self) -> int:
        return sum(memoryview(p).nbytes for p in self._parts)


def check_config(format: str | None, enc_key: Any, enc_mode: str, crc_check: bool) -> None:
    """CheckpointConfig's key/mode check for either format."""
    if format == "ckpt":
        mindspore_crypto.check_key(enc_key, enc_mode)
        if crc_check:
            raise ValueError("crc_check=True together with enc_key writes a file MindSpore cannot "
                             "load back; drop crc_check (the AES-GCM tag already detects any change)")
        return
    from torchresume.format import crypto
    crypto.check_key(enc_key, enc_mode, "enc_key")


def convert(src: str, dst: str, dec_key: bytes | None, enc_key: bytes | None, enc_mode: str,
            crc_check: bool) -> str:
    """``torchresume convert --to mindspore``: any readable checkpoint -> a MindSpore .ckpt.

    Returns what was written, in words, for the CLI to print."""
    from torchresume.files.single import read_checkpoint
    ckpt = read_checkpoint(src, dec_key=dec_key)
    tree = ckpt.tree
    if ckpt.kind == "optimizer":
        raise ValueError(f"{src}: holds an optimizer alone; MindSpore names optimizer state after "
                         "the network's parameters, so convert a file that holds both")
    info = ckpt.info
    entries = entries_of(tree, global_step=info.get("global_step"))
    entries = {k: v for k, v in entries.items() if isinstance(v, (torch.Tensor, str))}
    write(dst, encode(entries, append=ckpt.append, crc_check=crc_check, enc_key=enc_key,
                      enc_mode=enc_mode))
    return (f"MindSpore .ckpt, {len(entries)} entries, from {ckpt.format}"
            f"{', CRC' if crc_check else ''}{', ' + enc_mode if enc_key else ''}")


def restore(manager: Any, path: str, params: dict[str, Any]) -> dict[str, Any]:
    """Resume from a MindSpore file: weights, optimizer state (Momentum/Adam) and global_step.

    MindSpore files hold no data position or RNG state: the run continues at the
    epoch boundary after ``global_step`` with fresh RNG. Returns the info dict
    ``CheckpointManager.restore`` returns.
    """

    from torchresume.errors import StateMismatchError
    from torchresume.state.loading import load_param_into_net
    if manager.model is not None:
        missing, _ = load_param_into_net(manager.model, params)
        missing = [n for n in missing if not n.endswith("num_batches_tracked")]
        if missing:
            raise StateMismatchError(f"{path}: does not fit the model: missing {missing[:5]}")
    lacking = [k for k in ("scheduler", "scaler", "sampler") if getattr(manager, k) is not None]
    lacking.append("rng")
    if manager.optimizer is not None:
        if name_mapping.mindspore_optimizer_kind(params) is not None:
            load_param_into_net(manager.optimizer, params)
        else:
            lacking.append("optimizer")
    step = params.get("global_step")
    global_step = int(step.reshape(-1)[0]) if isinstance(step, torch.Tensor) else 0
    log.warning("%s is a MindSpore checkpoint: restored the weights%s at global step %s; %s start fresh",
                path, "" if "optimizer" in lacking else " and the optimizer state", global_step,
                ", ".join(lacking))
    return {"global_step": global_step, "lacking": lacking, "format": FORMAT, "epoch_end_done": True}
