"""Nested PyTorch state <-> named tensors plus a JSON skeleton, with no pickle.

A state tree is any nesting of dict (str or int keys), list, tuple, tensor,
numpy array, and JSON scalars (None, bool, int, float incl. inf/nan, str).
``flatten`` returns the tensors under unique dotted names and a JSON-safe
skeleton in which every container is tagged, so ``unflatten`` rebuilds the
tree exactly (key types, tuples vs lists, numpy vs torch included).

Skeleton tags: ``{"D": [[key, node], ...]}`` dict, ``{"L": [...]}`` list,
``{"U": [...]}`` tuple, ``{"T": name}`` tensor, ``{"N": name}`` numpy array,
``{"F": "inf"|"-inf"|"nan"}`` non-finite float; anything else is a literal.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from torchresume.errors import UnstorableStateError

Skeleton = Any


class TreeError(UnstorableStateError):
    """The state holds a value that cannot be stored without pickle; ``key`` is its dotted path."""


def flatten(tree: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], Skeleton]:
    """Split ``tree`` into ``{name: tensor}`` and a JSON-safe skeleton."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(tree, prefix, tensors)
    return tensors, skeleton


def _unique(name: str, tensors: dict[str, torch.Tensor]) -> str:
    name = name or "tensor"
    if name not in tensors:
        return name
    n = 1
    while f"{name}#{n}" in tensors:
        n += 1
    return f"{name}#{n}"


def _join(prefix: str, key: object) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _flatten(node: Any, path: str, tensors: dict[str, torch.Tensor]) -> Skeleton:
    if isinstance(node, torch.Tensor):
        name = _unique(path, tensors)
        tensors[name] = node
        return {"T": name}
    if isinstance(node, np.ndarray):
        name = _unique(path, tensors)
        tensors[name] = torch.from_numpy(np.ascontiguousarray(node))
        return {"N": name}
    if isinstance(node, np.generic):
        return _flatten(node.item(), path, tensors)
    if isinstance(node, dict):
        items = []
        for key, value in node.items():
            if isinstance(key, bool) or not isinstance(key, (str, int)):
                raise TreeError(f"state key {key!r} at {path or '<root>'!r} is a "
                                f"{type(key).__name__}; only str and int keys can be saved")
            items.append([key, _flatten(value, _join(path, key), tensors)])
        return {"D": items}
    if isinstance(node, (list, tuple)):
        tag = "L" if isinstance(node, list) else "U"
        return {tag: [_flatten(v, _join(path, i), tensors) for i, v in enumerate(node)]}
    if isinstance(node, float) and not math.isfinite(node):
        return {"F": repr(node)}
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    raise TreeError(f"cannot save {type(node).__name__} at {path or '<root>'!r}: "
                    "checkpoints hold tensors, numpy arrays, dicts, lists, tuples and "
                    "None/bool/int/float/str; convert it or give it a state_dict()", path)


def map_tensors(node: Any, fn: Any) -> Any:
    """A copy of the tree's containers with every tensor replaced by ``fn(tensor)``."""
    if isinstance(node, torch.Tensor):
        return fn(node)
    if isinstance(node, dict):
        return {k: map_tensors(v, fn) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(map_tensors(v, fn) for v in node)
    return node


def unflatten(skeleton: Skeleton, tensors: dict[str, torch.Tensor]) -> Any:
    """Rebuild the tree that ``flatten`` split. Raises KeyError/ValueError on bad skeletons."""
    if isinstance(skeleton, dict):
        if len(skeleton) != 1:
            raise ValueError(f"malformed skeleton node with keys {sorted(skeleton)[:5]}")
        (tag, value), = skeleton.items()
        if tag == "T":
            return tensors[value]
        if tag == "N":
            return tensors[value].numpy()
        if tag == "D":
            return {_key(k): unflatten(v, tensors) for k, v in value}
        if tag == "L":
            return [unflatten(v, tensors) for v in value]
        if tag == "U":
            return tuple(unflatten(v, tensors) for v in value)
        if tag == "F":
            if value not in ("inf", "-inf", "nan"):
                raise ValueError(f"bad float literal {value!r}")
            return float(value)
        raise ValueError(f"unknown skeleton tag {tag!r}")
    if isinstance(skeleton, list):
        raise ValueError("bare list in skeleton")
    return skeleton


def _key(key: Any) -> str | int:
    if isinstance(key, bool) or not isinstance(key, (str, int)):
        raise ValueError(f"bad dict key {key!r} in skeleton")
    return key


def flat_view(tree: Any, prefix: str = "") -> dict[str, Any]:
    """The MindSpore-style flat dict: dotted name -> tensor or scalar leaf.

    Dicts are always opened; lists and tuples are opened only when they hold a
    tensor or a container, so ``betas=(0.9, 0.999)`` or ``params=[0, 1]`` stay
    whole values.
    """
    out: dict[str, Any] = {}
    _flat(tree, prefix, out)
    return out


def _holds_structure(seq: list[Any] | tuple[Any, ...]) -> bool:
    return any(isinstance(v, (dict, list, tuple, torch.Tensor, np.ndarray)) for v in seq)


def _flat(node: Any, path: str, out: dict[str, Any]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            _flat(value, _join(path, key), out)
    elif isinstance(node, (list, tuple)) and _holds_structure(node):
        for i, value in enumerate(node):
            _flat(value, _join(path, i), out)
    else:
        out[path] = node
