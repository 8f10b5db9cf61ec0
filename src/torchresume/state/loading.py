"""load_param_into_net: a flat name -> tensor dict into a module or an optimizer, all or nothing.

MindSpore names (gamma/beta, moving_mean, moments.*) are mapped to torch's
first (format/name_mapping.py); non-strict loading casts float<->float and
int<->int and skips shape mismatches, reporting them; strict loading names
every difference and loads nothing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from torchresume.errors import StateMismatchError
from torchresume.state.train_state import is_training_part


def load_param_into_net(net: nn.Module | torch.optim.Optimizer, parameter_dict: dict[str, Any],
                        strict_load: bool = False) -> tuple[list[str], list[str]]:
    """Load ``parameter_dict`` into a module or an optimizer.

    Returns ``(param_not_load, ckpt_not_load)``: names the target has but the
    dict did not fill, and tensor names in the dict the target did not use.
    Non-strict loading casts float<->float and int<->int and skips (reporting)
    shape mismatches; strict loading raises StateMismatchError listing every
    difference. Nothing is modified unless the whole load can succeed.

    Example:
        ```python
        params = tr.load_checkpoint("lenet-2_1875.ckpt")        # MindSpore's names map to torch's
        param_not_load, ckpt_not_load = tr.load_param_into_net(net, params)
        tr.load_param_into_net(opt, params)                     # optimizer state from the same dict
        ```
    """
    from torchresume.format import name_mapping  # MindSpore's names: loaded by the first load, not on import
    if not isinstance(parameter_dict, dict):
        raise TypeError(f"parameter_dict must be a dict, got {type(parameter_dict).__name__}")
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


