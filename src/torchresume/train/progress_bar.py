"""ProgressBar: a tqdm bar per epoch, added by Model only when stderr is a terminal.

While the bar is drawn, torchresume's console lines (saved, loss, warnings) go through
``tqdm.write``: the bar is cleared, the line printed, the bar drawn again below it. The bar
shows the mean loss of the steps since its last refresh, and says so.
"""

from __future__ import annotations

import shutil
from typing import Any, TextIO

from torchresume import log
from torchresume.train.callback import Callback, RunContext


class ProgressBar(Callback):
    def __init__(self, refresh_every: int = 20) -> None:
        self.refresh_every = refresh_every
        self._bar: Any = None
        self._loss_sum: Any = 0.0
        self._losses = 0

    def _open(self, ctx: RunContext) -> None:
        from tqdm import tqdm
        # A terminal that reports a 0x0 size (a pty nobody sized, some CI consoles) makes tqdm
        # draw nothing at all; fall back to 100x20.
        size = shutil.get_terminal_size((100, 20))
        self._bar = tqdm(total=ctx.steps_per_epoch, initial=ctx.step, desc=f"epoch {ctx.epoch}",
                         leave=False, ncols=size.columns or 100, nrows=size.lines or 20,
                         mininterval=0, miniters=1)  # updated every refresh_every steps: draw each one
        self._loss_sum, self._losses = 0.0, 0

        def through(line: str, stream: TextIO) -> None:
            tqdm.write(line, file=stream)
        log.write_through(through)

    def on_train_epoch_begin(self, ctx: RunContext) -> None:
        self._open(ctx)

    def on_train_step_end(self, ctx: RunContext) -> None:
        if self._bar is None:  # a resumed epoch starts mid-way, without on_train_epoch_begin
            self._open(ctx)
        if ctx.loss is not None:
            self._loss_sum = self._loss_sum + ctx.loss.detach()  # no device sync until shown
            self._losses += 1
        if ctx.step % self.refresh_every == 0:
            self._bar.update(ctx.step - self._bar.n)
            if self._losses:
                mean = float(self._loss_sum) / self._losses
                self._bar.set_postfix_str(f"mean loss of {self._losses} steps {mean:.4f}", refresh=False)
            self._loss_sum, self._losses = 0.0, 0

    def on_train_epoch_end(self, ctx: RunContext) -> None:
        self._close()

    def on_train_end(self, ctx: RunContext) -> None:
        self._close()

    def on_exception(self, ctx: RunContext, exc: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        log.write_through(None)
        if self._bar is not None:
            self._bar.close()
            self._bar = None
