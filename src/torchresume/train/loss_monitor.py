"""LossMonitor: prints the loss every N steps; a NaN or Inf loss stops training with a clear error."""

from __future__ import annotations

import math

from torchresume.log import monitor
from torchresume.train.callback import Callback, RunContext


class LossMonitor(Callback):
    """Log the loss every ``per_print_times`` steps (0: never); a NaN or Inf loss stops training.

    Example:
        ```python
        model.train(1, train_ds, callbacks=[tr.LossMonitor(per_print_times=2)])
        ```
    """

    def __init__(self, per_print_times: int = 1) -> None:
        if isinstance(per_print_times, bool) or not isinstance(per_print_times, int) or per_print_times < 0:
            raise ValueError(f"per_print_times must be a non-negative int, got {per_print_times!r}")
        self.per_print_times = per_print_times

    def on_train_step_end(self, ctx: RunContext) -> None:
        if not self.per_print_times or ctx.global_step % self.per_print_times:
            return
        loss = float(ctx.loss) if ctx.loss is not None else math.nan
        if not math.isfinite(loss):
            raise ValueError(f"loss is {loss} at epoch {ctx.epoch} step {ctx.step}: training "
                             "diverged; lower the learning rate or check the data")
        monitor.info("epoch: %d step: %d, loss is %.6f", ctx.epoch, ctx.step, loss)
