"""The Stateful protocol: anything with state_dict / load_state_dict can be checkpointed."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Stateful(Protocol):
    """Anything with ``state_dict()`` / ``load_state_dict()``: modules, optimizers, schedulers, samplers.

    ``CheckpointManager(..., extra={"name": obj})`` saves such an object under its name and
    restores it on resume; ``Callback`` subclasses that define both methods are saved by ``Model``.

    Example:
        ```python
        class Tokens:
            def __init__(self):
                self.seen = 0
            def state_dict(self):
                return {"seen": self.seen}
            def load_state_dict(self, state):
                self.seen = state["seen"]

        tokens = Tokens()
        assert isinstance(tokens, tr.Stateful)
        mgr = tr.CheckpointManager("runs/tokens", model=net, prefix="net", extra={"tokens": tokens})
        mgr.close()
        ```
    """

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...
