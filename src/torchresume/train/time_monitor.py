"""TimeMonitor: epoch time and mean per-step time."""

from __future__ import annotations

import time

from torchresume.log import monitor
from torchresume.train.callback import Callback, RunContext


class TimeMonitor(Callback):
    """Log each epoch's time and the mean time per step; ``epoch_times`` keeps the epochs' seconds.

    Example:
        ```python
        model.train(1, train_ds, callbacks=[tr.TimeMonitor()])
        ```
    """

    def __init__(self, data_size: int | None = None) -> None:
        self.data_size = data_size
        self.epoch_times: list[float] = []
        self._start = 0.0
        self._first_step = 0

    def on_train_epoch_begin(self, ctx: RunContext) -> None:
        self._start, self._first_step = time.perf_counter(), ctx.step

    def on_train_epoch_end(self, ctx: RunContext) -> None:
        if not self._start:
            return
        elapsed = time.perf_counter() - self._start
        steps = max(1, (self.data_size or ctx.step) - self._first_step)
        self.epoch_times.append(elapsed)
        monitor.info("epoch %d time: %.3f s, per step time: %.3f ms", ctx.epoch, elapsed, 1000 * elapsed / steps)
