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
class Entry:
    name: str
    obj: Stateful
    required: bool = True  # a checkpoint without it is reported as lacking it


class StateRegistry:
    """Named Stateful objects, in registration order."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, obj: Any, *, required: bool = True) -> None:
        """Add ``obj`` (anything with state_dict/load_state_dict) under ``name``."""
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"state name must be a non-empty str without '.', got {name!r}")
        if not (callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))):
            raise TypeError(f"{name!r}: {type(obj).__name__} has no state_dict()/load_state_dict(); "
                            "implement the Stateful protocol to checkpoint it")
        if name in self._entries:
            raise ValueError(f"state name {name!r} is registered already")
        self._entries[name] = Entry(name, obj, required)

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(list(self._entries.values()))

    def names(self) -> list[str]:
        return list(self._entries)

    def get(self, name: str) -> Any:
        entry = self._entries.get(name)
        return entry.obj if entry is not None else None

    def capture(self) -> dict[str, Any]:
        """``{name: obj.state_dict()}`` for every entry (tensors still shared with the objects)."""
        return {e.name: e.obj.state_dict() for e in self}

    def restore(self, tree: dict[str, Any]) -> list[str]:
        """Load each entry's sub-tree; returns the required names ``tree`` lacks."""
        lacking = []
        for e in self:
            if e.name in tree:
                e.obj.load_state_dict(tree[e.name])
            elif e.required:
                lacking.append(e.name)
        return lacking


__all__ = ["BUILTIN", "StateRegistry"]
