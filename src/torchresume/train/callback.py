"""The Callback base (no-op hooks plus on_exception) and dispatch; the hooks' RunContext is run_state.py's.

Hooks are called only on callbacks that override them, so an unused hook
costs nothing per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torchresume.train.run_state import RunContext

HOOKS = ("on_resume", "on_stop", "on_train_begin", "on_train_end", "on_train_epoch_begin", "on_train_epoch_end",
         "on_train_step_begin", "on_train_step_end", "on_eval_begin", "on_eval_end")


class Callback:
    """Base class: override the hooks you need. Stateful callbacks also define
    ``state_dict`` / ``load_state_dict`` and are saved in every checkpoint.

    Example:
        ```python
        class CountSteps(tr.Callback):
            def __init__(self):
                self.steps = 0
            def on_train_step_end(self, ctx):
                self.steps += 1
            def state_dict(self):                 # saved with the run, restored on resume
                return {"steps": self.steps}
            def load_state_dict(self, state):
                self.steps = state["steps"]

        counter = CountSteps()
        model.train(1, train_ds, callbacks=[counter])
        assert counter.steps == 4
        ```
    """

    def on_resume(self, ctx: RunContext) -> None:
        """Before training begins, when Model.train/fit was given ``resume``: restore the run
        ``ctx.resume`` names (checkpoint callbacks do) and set ctx's position."""

    def on_stop(self, ctx: RunContext) -> None:
        """A stop signal arrived: training ends after this step (checkpoint callbacks save it)."""

    def on_train_begin(self, ctx: RunContext) -> None: ...
    def on_train_end(self, ctx: RunContext) -> None: ...
    def on_train_epoch_begin(self, ctx: RunContext) -> None: ...
    def on_train_epoch_end(self, ctx: RunContext) -> None: ...
    def on_train_step_begin(self, ctx: RunContext) -> None: ...
    def on_train_step_end(self, ctx: RunContext) -> None: ...
    def on_eval_begin(self, ctx: RunContext) -> None: ...
    def on_eval_end(self, ctx: RunContext) -> None: ...

    def on_exception(self, ctx: RunContext, exc: BaseException) -> None:
        """Called when training raises; the exception is re-raised afterwards."""

    def overrides(self, hook: str) -> bool:
        """Whether this callback implements ``hook`` (only those are called)."""
        return getattr(type(self), hook) is not getattr(Callback, hook)

    @property
    def state_key(self) -> str:
        """The name this callback's state is saved under."""
        return type(self).__name__


class CallbackList:
    """Dispatches each hook to the callbacks that override it."""

    def __init__(self, callbacks: Sequence[Callback] | Callback | None) -> None:
        if callbacks is None:
            items: list[Callback] = []
        elif isinstance(callbacks, Callback):
            items = [callbacks]
        else:
            items = list(callbacks)
        for cb in items:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks must be Callback instances, got {type(cb).__name__}")
        self.callbacks = items
        self._by_hook = {h: [getattr(cb, h) for cb in items if cb.overrides(h)]
                         for h in (*HOOKS, "on_exception")}

    def call(self, hook: str, ctx: RunContext) -> None:
        for fn in self._by_hook[hook]:
            fn(ctx)

    def has(self, hook: str) -> bool:
        return bool(self._by_hook[hook])

    def on_exception(self, ctx: RunContext, exc: BaseException) -> None:
        for fn in self._by_hook["on_exception"]:
            fn(ctx, exc)

    def stateful(self) -> dict[str, Any]:
        """Callbacks that carry state, by a unique key."""
        out: dict[str, Any] = {}
        for cb in self.callbacks:
            if hasattr(cb, "state_dict") and hasattr(cb, "load_state_dict"):
                key, n = cb.state_key, 1
                while key in out:
                    n += 1
                    key = f"{cb.state_key}#{n}"
                out[key] = cb
        return out

    def find(self, kind: type) -> list[Any]:
        return [cb for cb in self.callbacks if isinstance(cb, kind)]
