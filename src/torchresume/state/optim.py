"""Load a flat checkpoint dict into a torch optimizer.

The flat names come from ``flat_view`` of an optimizer state_dict, either at
the top level (``state.3.momentum_buffer``, ``param_groups.0.lr``) for a saved
optimizer or under ``optimizer.`` for a full training state.

Decision (documented in the README): per-parameter state (momentum buffers,
Adam moments, step counts) is restored, while hyperparameters (lr, momentum,
weight decay...) keep the values the optimizer was built with. That is the
seed's intent when it resumes with a new optimizer at a lower rate; an exact
resume of the same run restores the hyperparameters too (``restore_hyperparams``).
"""

from __future__ import annotations

from typing import Any

import torch

from torchresume.errors import StateMismatchError

_PREFIXES = ("optimizer.", "")


def _collect(params: dict[str, Any]) -> tuple[str, dict[int, dict[str, Any]], dict[int, dict[str, Any]]]:
    for prefix in _PREFIXES:
        state: dict[int, dict[str, Any]] = {}
        groups: dict[int, dict[str, Any]] = {}
        for name, value in params.items():
            if not name.startswith(prefix):
                continue
            parts = name[len(prefix):].split(".", 2)
            if len(parts) != 3 or parts[0] not in ("state", "param_groups") or not parts[1].isdigit():
                continue
            table = state if parts[0] == "state" else groups
            table.setdefault(int(parts[1]), {})[parts[2]] = value
        if state or groups:
            return prefix, state, groups
    return "", {}, {}


def load_into_optimizer(opt: torch.optim.Optimizer, params: dict[str, Any], strict: bool,
                        restore_hyperparams: bool = False) -> tuple[list[str], list[str]]:
    prefix, state, groups = _collect(params)
    if not state and not groups:
        if strict:
            raise StateMismatchError("strict load failed; the dict holds no optimizer state "
                                     "(no 'optimizer.state.*' or 'state.*' entries)")
        return [f"state.{i}" for i in range(_param_count(opt))], []
    current = opt.state_dict()
    flat_params = [p for g in opt.param_groups for p in g["params"]]
    problems: list[str] = []
    new_state: dict[int, dict[str, Any]] = {}
    used: set[str] = set()
    for idx, entries in sorted(state.items()):
        if idx >= len(flat_params):
            problems.append(f"state.{idx}: the optimizer has only {len(flat_params)} parameters")
            continue
        shape = tuple(flat_params[idx].shape)
        bad = [k for k, v in entries.items() if isinstance(v, torch.Tensor) and v.dim() > 0
               and tuple(v.shape) != shape]
        if bad:
            problems.append(f"state.{idx}.{bad[0]}: checkpoint shape "
                            f"{tuple(entries[bad[0]].shape)} vs parameter {shape}")
            continue
        new_state[idx] = dict(entries)
        used.update(f"{prefix}state.{idx}.{k}" for k in entries)
    if groups and len(groups) != len(current["param_groups"]):
        problems.append(f"param_groups: checkpoint has {len(groups)}, optimizer has "
                        f"{len(current['param_groups'])}")
    elif groups:
        for i, group in enumerate(current["param_groups"]):
            count = _group_size(groups.get(i, {}))
            if count is not None and count != len(group["params"]):
                problems.append(f"param_groups.{i}: checkpoint has {count} parameters, "
                                f"optimizer has {len(group['params'])}")
    if strict and problems:
        raise StateMismatchError("strict load failed; nothing was loaded:\n  "
                                 + "\n  ".join(problems))
    merged_groups = []
    for i, group in enumerate(current["param_groups"]):
        saved = groups.get(i, {}) if len(groups) == len(current["param_groups"]) else {}
        merged = dict(group)
        if restore_hyperparams:
            merged.update({k: v for k, v in saved.items() if k != "params"})
        merged["params"] = group["params"]
        merged_groups.append(merged)
        used.update(f"{prefix}param_groups.{i}.{k}" for k in saved)
    opt.load_state_dict({"state": new_state, "param_groups": merged_groups})
    not_loaded = [f"state.{i}" for i in range(len(flat_params)) if i not in new_state]
    unused = [k for k, v in params.items() if k.startswith(prefix) and k not in used
              and isinstance(v, torch.Tensor) and (prefix or k.startswith("state."))]
    return not_loaded, unused


def _group_size(group: dict[str, Any]) -> int | None:
    """How many parameters a saved group lists ("params" whole, or flattened "params.N")."""
    if isinstance(group.get("params"), (list, tuple)):
        return len(group["params"])
    flat = [k for k in group if k.startswith("params.")]
    return len(flat) if flat else None


def _param_count(opt: torch.optim.Optimizer) -> int:
    return sum(len(g["params"]) for g in opt.param_groups)
