"""LambdaCallback: build a callback from plain functions."""

from __future__ import annotations

from collections.abc import Callable

from torchresume.train.callback import HOOKS, Callback, RunContext

Hook = Callable[[RunContext], None]


class LambdaCallback(Callback):
    """``LambdaCallback(on_train_step_end=lambda ctx: ...)``; any hook name of Callback.

    Example:
        ```python
        losses = []
        log_loss = tr.LambdaCallback(on_train_step_end=lambda ctx: losses.append(float(ctx.loss)))
        model.train(1, train_ds, callbacks=[log_loss])
        ```
    """

    def __init__(self, on_exception: Callable[[RunContext, BaseException], None] | None = None,
                 **hooks: Hook) -> None:
        unknown = set(hooks) - set(HOOKS)
        if unknown:
            raise TypeError(f"unknown hooks {sorted(unknown)}; choose from {list(HOOKS)}")
        for name, fn in hooks.items():
            setattr(self, name, fn)
        if on_exception is not None:
            self.on_exception = on_exception  # type: ignore[method-assign,assignment]
        self._given = set(hooks) | ({"on_exception"} if on_exception else set())

    def overrides(self, hook: str) -> bool:
        return hook in self._given
