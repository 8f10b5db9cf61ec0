"""EarlyStopping: stop when a monitored metric stops improving; counters survive resume."""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from torchresume.log import log
from torchresume.train.callback import Callback, RunContext


class EarlyStopping(Callback):
    """Stop training when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    ``monitor`` names a training value (``"loss"``) or, with the ``eval_`` prefix, a validation
    metric (``"eval_acc"``); ``mode="auto"`` maximises names containing ``acc`` and minimises the
    rest. Its counters and best value are saved in checkpoints, so a resumed run keeps counting.

    Example:
        ```python
        model.fit(2, train_ds, valid_ds, callbacks=[tr.EarlyStopping("eval_loss", patience=3)])
        ```
    """

    def __init__(self, monitor: str = "eval_loss", min_delta: float = 0.0, patience: int = 0,
                 mode: str = "auto", baseline: float | None = None,
                 restore_best_weights: bool = False) -> None:
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"patience must be a non-negative int, got {patience!r}")
        self.monitor, self.min_delta, self.patience = monitor, abs(min_delta), patience
        self.mode = mode if mode != "auto" else ("max" if "acc" in monitor else "min")
        self.baseline, self.restore_best_weights = baseline, restore_best_weights
        self.best = baseline if baseline is not None else (-math.inf if self.mode == "max" else math.inf)
        self.wait = 0
        self.stopped_epoch = 0
        self._best_weights: dict[str, Any] | None = None

    def _value(self, ctx: RunContext) -> float | None:
        key = self.monitor.removeprefix("eval_")
        if key in ctx.metrics:
            return float(ctx.metrics[key])
        if self.monitor == "loss" and ctx.loss is not None:
            return float(ctx.loss)
        return None

    def on_train_epoch_end(self, ctx: RunContext) -> None:
        if not self.monitor.startswith("eval_"):
            self._check(ctx)

    def on_eval_end(self, ctx: RunContext) -> None:
        if self.monitor.startswith("eval_") and ctx.epoch:
            self._check(ctx)

    def _check(self, ctx: RunContext) -> None:
        value = self._value(ctx)
        if value is None:
            return
        improved = (value > self.best + self.min_delta if self.mode == "max"
                    else value < self.best - self.min_delta)
        if improved:
            self.best, self.wait = value, 0
            if self.restore_best_weights:
                self._best_weights = {k: v.detach().clone() for k, v in ctx.network.state_dict().items()}
            return
        self.wait += 1
        if self.wait > self.patience:
            self.stopped_epoch = ctx.epoch
            ctx.request_stop()
            log.info("EarlyStopping: %s did not improve for %d epochs; stopping at epoch %d",
                     self.monitor, self.wait, ctx.epoch)
            if self.restore_best_weights and self._best_weights is not None:
                _load(ctx.network, self._best_weights)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait, "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait, self.stopped_epoch = state["best"], state["wait"], state["stopped_epoch"]


def _load(network: nn.Module, weights: dict[str, Any]) -> None:
    network.load_state_dict(weights)
