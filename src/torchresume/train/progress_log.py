"""ProgressLog: periodic progress lines for logs (stderr not a terminal), added by Model."""

from __future__ import annotations

import time

from torchresume.log import progress
from torchresume.train.callback import Callback, RunContext


class ProgressLog(Callback):
    """A line every ``parts``-th of an epoch: step, percent, loss and speed."""

    def __init__(self, parts: int = 10) -> None:
        self.parts = parts
        self._every = 0
        self._start, self._first = 0.0, 0

    def on_train_begin(self, ctx: RunContext) -> None:
        self._every = max(1, ctx.steps_per_epoch // self.parts)
        self._start, self._first = time.perf_counter(), ctx.global_step

    def on_train_step_end(self, ctx: RunContext) -> None:
        if not self._every or ctx.step % self._every:
            return
        loss = f"{float(ctx.loss):.4f}" if ctx.loss is not None else "-"
        elapsed = time.perf_counter() - self._start
        rate = (ctx.global_step - self._first) / elapsed if elapsed > 0 else 0.0
        progress.info("epoch %d/%d step %d/%d (%d%%) loss %s, %.1f steps/s", ctx.epoch, ctx.epoch_num, ctx.step,
                      ctx.steps_per_epoch, 100 * ctx.step // max(1, ctx.steps_per_epoch), loss, rate)
