"""Names and optimizer state between MindSpore checkpoints and torch modules/optimizers.

Weights map one to one where the layouts agree (Conv2d/Conv1d OIHW, Dense and
Linear (out, in), biases). Where they do not, ``RULES`` says how a torch
module's state name is spelled in MindSpore; add a rule for a new layer type
with ``RULES.append(Rule(...))``:

| torch module                   | torch name                  | MindSpore name     |
|--------------------------------|-----------------------------|--------------------|
| BatchNorm1d/2d/3d              | weight, bias                | gamma, beta        |
|                                | running_mean, running_var   | moving_mean, moving_variance |
|                                | num_batches_tracked         | (none: not written)|
| LayerNorm, GroupNorm           | weight, bias                | gamma, beta        |
| Embedding                      | weight                      | embedding_table    |

Optimizer state (the parameter's MindSpore name is ``<p>``; parameters are
matched by their order, MindSpore's ``net.trainable_params()`` against the
torch optimizer's ``param_groups``):

- torch SGD ``momentum_buffer`` <-> Momentum ``moments.<p>`` (+ ``learning_rate``,
  ``momentum``, ``global_step``); the update rules are identical (dampening 0).
- torch Adam/AdamW ``exp_avg``, ``exp_avg_sq``, ``step`` <-> Adam ``moment1.<p>``,
  ``moment2.<p>``, ``global_step`` (+ ``beta1_power``, ``beta2_power``, ``learning_rate``).
- AdamWeightDecay ``adam_m.<p>``, ``adam_v.<p>``, ``global_step`` -> torch Adam/AdamW
  (read only: torchresume writes Adam's names).

Hyperparameters (learning rate, momentum) are written for MindSpore and, on
the torch side, keep the values the optimizer was built with (torchresume's
rule for every resume with a new optimizer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from torchresume.errors import StateMismatchError

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


@dataclass(frozen=True)
class Rule:
    """Inside a module of one of ``types``, torch's ``torch_name`` is MindSpore's ``ms_name``
    (``ms_name=None``: the entry has no MindSpore counterpart and is not written)."""

    types: tuple[type, ...]
    torch_name: str
    ms_name: str | None


RULES: list[Rule] = [
    Rule((nn.modules.batchnorm._BatchNorm,), "running_mean", "moving_mean"),
    Rule((nn.modules.batchnorm._BatchNorm,), "running_var", "moving_variance"),
    Rule((nn.modules.batchnorm._BatchNorm,), "num_batches_tracked", None),
    Rule(_NORMS, "weight", "gamma"),
    Rule(_NORMS, "bias", "beta"),
    Rule((nn.Embedding,), "weight", "embedding_table"),
]

# Optimizer entry prefixes MindSpore uses, by torch state key.
MOMENTUM = {"momentum_buffer": "moments"}
ADAM = {"exp_avg": "moment1", "exp_avg_sq": "moment2"}
ADAM_WEIGHT_DECAY = {"exp_avg": "adam_m", "exp_avg_sq": "adam_v"}


_OPTIMIZER_PREFIXES = tuple(f"{v}." for table in (MOMENTUM, ADAM, ADAM_WEIGHT_DECAY) for v in table.values())
_OPTIMIZER_SCALARS = ("global_step", "learning_rate", "momentum", "beta1_power", "beta2_power")


def is_optimizer_entry(name: str) -> bool:
    """A MindSpore checkpoint's training-state entry (moments, step, lr), not a network weight."""
    return name in _OPTIMIZER_SCALARS or name.startswith(_OPTIMIZER_PREFIXES)


def _split(name: str) -> tuple[str, str]:
    head, _, leaf = name.rpartition(".")
    return head, leaf


def module_names(net: nn.Module) -> dict[str, str | None]:
    """torch state_dict name -> MindSpore name (None: not written) for a live module."""
    modules = dict(net.named_modules())
    out: dict[str, str | None] = {}
    for name in net.state_dict():
        head, leaf = _split(name)
        out[name] = name
        module = modules.get(head)
        for rule in RULES:
            if module is not None and isinstance(module, rule.types) and leaf == rule.torch_name:
                out[name] = None if rule.ms_name is None else (f"{head}.{rule.ms_name}" if head
                                                               else rule.ms_name)
                break
    return out


def tree_names(names: list[str]) -> dict[str, str | None]:
    """The same mapping guessed from names alone (no module types), for files.

    A module holding ``running_mean`` is taken for a BatchNorm; LayerNorm,
    GroupNorm and Embedding cannot be told from their names and keep theirs.
    """
    norms = {_split(n)[0] for n in names if _split(n)[1] == "running_mean"}
    out: dict[str, str | None] = {}
    for name in names:
        head, leaf = _split(name)
        out[name] = name
        if head in norms:
            for rule in RULES[:5]:
                if leaf == rule.torch_name:
                    out[name] = None if rule.ms_name is None else f"{head}.{rule.ms_name}"
                    break
    return out


def to_torch_names(net: nn.Module, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with MindSpore names renamed to ``net``'s state_dict names (others kept)."""
    inverse = {ms: t for t, ms in module_names(net).items() if ms is not None and ms != t}
    if not inverse or not any(k in inverse for k in params):
        return params
    own = set(net.state_dict())
    return {(inverse[k] if k in inverse and k not in own else k): v for k, v in params.items()}


# -- optimizer state ------------------------------------------------------------------------

def _flat_params(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for g in opt.param_groups for p in g["params"]]


def _prefixed(params: dict[str, Any], prefix: str) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in params.items() if k.startswith(prefix + ".")
            and isinstance(v, torch.Tensor)]


def mindspore_optimizer_kind(params: dict[str, Any]) -> str | None:
    """'Momentum', 'Adam' or 'AdamWeightDecay' when ``params`` holds that MindSpore state."""
    for kind, table in (("Momentum", MOMENTUM), ("Adam", ADAM),
                        ("AdamWeightDecay", ADAM_WEIGHT_DECAY)):
        if _prefixed(params, next(iter(table.values()))):
            return kind
    return None


def optimizer_from_mindspore(opt: torch.optim.Optimizer, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` plus torch ``state.<i>.*`` entries built from MindSpore optimizer state.

    Returns ``params`` unchanged when it holds no MindSpore optimizer state or
    already holds torch state.
    """
    kind = mindspore_optimizer_kind(params)
    if kind is None or any(k.startswith(("state.", "optimizer.state.")) for k in params):
        return params
    wants = "SGD" if kind == "Momentum" else "Adam/AdamW"
    is_sgd = isinstance(opt, torch.optim.SGD)
    is_adam = isinstance(opt, (torch.optim.Adam, torch.optim.AdamW))
    if (kind == "Momentum" and not is_sgd) or (kind != "Momentum" and not is_adam):
        raise StateMismatchError(f"the checkpoint holds MindSpore {kind} state, which maps to "
                                 f"torch {wants}, not {type(opt).__name__}; build a {wants}")
    table = {"Momentum": MOMENTUM, "Adam": ADAM, "AdamWeightDecay": ADAM_WEIGHT_DECAY}[kind]
    flat = _flat_params(opt)
    out = dict(params)
    step = params.get("global_step")
    for torch_key, prefix in table.items():
        entries = _prefixed(params, prefix)
        if len(entries) != len(flat):
            raise StateMismatchError(
                f"the checkpoint holds {len(entries)} MindSpore '{prefix}.*' entries but the "
                f"optimizer has {len(flat)} parameters; build the optimizer over the same "
                "parameters, in the same order, as MindSpore's net.trainable_params()")
        for i, (name, value) in enumerate(entries):
            out[f"state.{i}.{torch_key}"] = value
            out.pop(name)
    if kind != "Momentum":
        count = float(step.reshape(-1)[0]) if isinstance(step, torch.Tensor) else 0.0
        for i in range(len(flat)):
            out[f"state.{i}.step"] = torch.tensor(count, dtype=torch.float32)
    for name in ("global_step", "learning_rate", "momentum", "beta1_power", "beta2_power"):
        out.pop(name, None)
    return out


def optimizer_to_mindspore(opt_state: dict[str, Any], params: list[tuple[str, torch.Tensor]],
                           global_step: int | None = None) -> dict[str, Any]:
    """MindSpore entries (``moments.<p>`` ...) for a torch SGD or Adam/AdamW state_dict.

    ``params`` are the optimizer's parameters in order, each with its MindSpore
    name; ``opt_state`` is ``Optimizer.state_dict()``. Missing buffers (no
    step taken yet) are written as zeros, as MindSpore initialises them.
    """
    groups = opt_state["param_groups"]
    index = [i for g in groups for i in g["params"]]
    if len(index) != len(params):
        raise ValueError(f"the optimizer has {len(index)} parameters but the network "
                         f"{len(params)} trainable ones; save a network and the "
                         "optimizer built over its parameters")
    group0 = groups[0]
    state = opt_state["state"]
    adam = "betas" in group0
    if adam:
        keys = ADAM
    elif group0.get("momentum"):
        keys = MOMENTUM
    else:
        raise ValueError("only torch SGD with momentum and Adam/AdamW map to MindSpore "
                         "optimizer state (Momentum, Adam)")
    out: dict[str, Any] = {}
    steps = [float(state[i]["step"]) for i in index if i in state and "step" in state[i]]
    step = int(global_step if global_step is not None else (max(steps) if steps else 0))
    out["global_step"] = torch.tensor([step], dtype=torch.int32)
    out["learning_rate"] = torch.tensor(float(group0["lr"]), dtype=torch.float32)
    if adam:
        b1, b2 = group0["betas"]
        out["beta1_power"] = torch.tensor(float(b1) ** step, dtype=torch.float32)
        out["beta2_power"] = torch.tensor(float(b2) ** step, dtype=torch.float32)
    else:
        out["momentum"] = torch.tensor(float(group0["momentum"]), dtype=torch.float32)
    for torch_key, prefix in keys.items():
        for i, (name, param) in zip(index, params, strict=True):
            value = state.get(i, {}).get(torch_key)
            out[f"{prefix}.{name}"] = (value if isinstance(value, torch.Tensor)
                                       else torch.zeros_like(param, device="cpu"))
    return out
