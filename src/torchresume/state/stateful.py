"""The Stateful protocol: anything with state_dict / load_state_dict can be checkpointed."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Stateful(Protocol):
    """Anything with ``state_dict()`` / ``load_state_dict()``: modules, optimizers, schedulers, samplers.

    ``CheckpointManager(..., extra={"name": obj})`` saves such an object under its name and
    restores it on resume; ``Callback`` subclasses that define both methods are saved by ``Model``.
    """

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...
