"""ProgressBar: a tqdm bar per epoch, added by Model only when stderr is a terminal."""

from __future__ import annotations

import shutil
from typing import Any

from torchresume.train.callback import Callback, RunContext


class ProgressBar(Callback):
    def __init__(self, refresh_every: int = 20) -> None:
        self.refresh_every = refresh_every
        self._bar: Any = None

    def _open(self, ctx: RunContext) -> None:
        from tqdm import tqdm
        # A terminal that reports a 0x0 size (a pty nobody sized, some CI consoles) makes tqdm
        # draw nothing at all; fall back to 100x20.
        size = shutil.get_terminal_size((100, 20))
        self._bar = tqdm(total=ctx.steps_per_epoch, initial=ctx.step, desc=f"epoch {ctx.epoch}",
                         leave=False, ncols=size.columns or 100, nrows=size.lines or 20,
                         mininterval=0, miniters=1)  # updated every refresh_every steps: draw each one

    def on_train_epoch_begin(self, ctx: RunContext) -> None:
        self._open(ctx)

    def on_train_step_end(self, ctx: RunContext) -> None:
        if self._bar is None:  # a resumed epoch starts mid-way, without on_train_epoch_begin
            self._open(ctx)
        if ctx.step % self.refresh_every == 0:
            self._bar.update(ctx.step - self._bar.n)
            self._bar.set_postfix(loss=f"{float(ctx.loss):.4f}", refresh=False)  # type: ignore[arg-type]

    def on_train_epoch_end(self, ctx: RunContext) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
