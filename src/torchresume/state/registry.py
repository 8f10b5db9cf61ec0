"""The state registry: every named Stateful a checkpoint holds, and how each is captured.

A training checkpoint is one tree: the model's state_dict at the top level
(so the file loads into a bare network), then one sub-tree per registered
entry under its name: ``optimizer``, ``scheduler``, ``scaler``, ``sampler``,
``rng``, ``callbacks`` are just entries the manager registers, and a user's
own objects (an EMA, a curriculum, a data-loader) register beside them. Names
must be unique and may not collide with the model's top-level names.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from torchresume.state.stateful import Stateful
from torchresume.state.train_state import RESERVED as BUILTIN  # the manager's own entries


@dataclass
class RegisteredState:
    """One named Stateful object of a StateRegistry."""

    name: str
    obj: Stateful
    required: bool = True  # a checkpoint without it is reported as lacking it


class StateRegistry:
    """Named Stateful objects, in registration order."""

    def __init__(self) -> None:
        self._entries: dict[str, RegisteredState] = {}

    def register(self, name: str, obj: Any, *, required: bool = True) -> None:
        """Add ``obj`` (anything with state_dict/load_state_dict) under ``name``."""
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"state name must be a non-empty str without '.', got {name!r}")
        if not (callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))):
            raise TypeError(f"{name!r}: {type(obj).__name__} has no state_dict()/load_state_dict(); "
                            "implement the Stateful protocol to checkpoint it")
        if name in self._entries:
            raise ValueError(f"state name {name!r} is registered already")
        self._entries[name] = RegisteredState(name, obj, required)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[RegisteredState]:
        return iter(list(self._entries.values()))


def capture_tree(model: Any, registry: StateRegistry, *, callbacks: dict[str, Any] | None = None,
                 rng_state: dict[str, Any] | None = None,
                 sampler_state: dict[str, Any] | None = None) -> dict[str, Any]:
    """One checkpoint tree: ``model``'s weights at the top, each entry under its name.

    Tensors stay shared with the live objects (snapshot them for a background write).
    ``sampler_state``/``rng_state``/``callbacks`` are states the caller computed for this
    exact step (the harness knows the data position and the RNG after the last step).
    """
    from torchresume.state import rng
    tree: dict[str, Any] = dict(model.state_dict()) if model is not None else {}
    clash = [k for k in tree if k.split(".", 1)[0] in BUILTIN]
    if clash:
        raise ValueError(f"model state names {clash[:3]} start with a reserved word {BUILTIN}; "
                         "rename the submodule")
    for entry in registry:
        state = entry.obj.state_dict()
        if entry.name in BUILTIN:
            tree[entry.name] = state
        else:
            tree.setdefault("extra", {})[entry.name] = state
    if sampler_state is not None:
        tree["sampler"] = sampler_state
    tree["rng"] = rng_state if rng_state is not None else rng.capture()
    if callbacks:
        tree["callbacks"] = callbacks
    return tree


def restore_tree(tree: Any, path: str, model: Any, registry: StateRegistry, *,
                 callbacks: dict[str, Any] | None = None, restore_rng: bool = True) -> list[str]:
    """Load a checkpoint tree into ``model`` and every entry; returns what the tree lacked."""
    from torchresume.errors import StateMismatchError
    from torchresume.state import rng
    tree = tree if isinstance(tree, dict) else {}
    if model is not None:
        weights = {k: v for k, v in tree.items() if k.split(".", 1)[0] not in BUILTIN}
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if missing or unexpected:
            raise StateMismatchError(f"{path}: does not fit the model: missing "
                                     f"{list(missing)[:5]}, unexpected {list(unexpected)[:5]}")
    extra = tree.get("extra", {}) if isinstance(tree.get("extra"), dict) else {}
    lacking = []
    for entry in registry:  # built-in entries at the top level, the user's under extra
        source = tree if entry.name in BUILTIN else extra
        if entry.name in source:
            entry.obj.load_state_dict(source[entry.name])
        elif entry.required:
            lacking.append(entry.name if entry.name in BUILTIN else f"extra.{entry.name}")
    if restore_rng and "rng" in tree:
        rng.restore(tree["rng"])
    elif restore_rng:
        lacking.append("rng")
    for name, obj in (callbacks or {}).items():
        state = tree.get("callbacks", {}).get(name)
        if state is not None:
            obj.load_state_dict(state)
    return lacking
