"""SummaryCollector: per-step and per-epoch scalars as JSON lines (one file per run)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from torchresume.storage.confine import open_no_follow
from torchresume.train.callback import Callback, RunContext


class SummaryCollector(Callback):
    """Scalars as JSON lines in ``{summary_dir}/summary.jsonl``: step losses, epochs, evaluations.

    One record every ``collect_freq`` steps (loss and learning rate), one per epoch and one per
    evaluation, each with a ``time``. A link in the file's place is refused (UnsafePathError), never
    appended through.

    Example:
        ```python
        model.train(1, train_ds, callbacks=[tr.SummaryCollector("summary", collect_freq=2)])
        ```
    """

    def __init__(self, summary_dir: str, collect_freq: int = 10) -> None:
        if isinstance(collect_freq, bool) or not isinstance(collect_freq, int) or collect_freq < 1:
            raise ValueError(f"collect_freq must be a positive int, got {collect_freq!r}")
        self.summary_dir, self.collect_freq = summary_dir, collect_freq
        self.path = os.path.join(summary_dir, "summary.jsonl")
        self._file: Any = None

    def on_train_begin(self, ctx: RunContext) -> None:
        self._open()  # a link in the file's place is refused before the first step, not at it

    def _open(self) -> None:
        if self._file is None:
            os.makedirs(self.summary_dir, exist_ok=True)
            # Never through a link: the file it leads to (outside the run, say) is not ours to append to.
            fd = open_no_follow(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            self._file = os.fdopen(fd, "a", encoding="utf-8")

    def _write(self, record: dict[str, Any]) -> None:
        self._open()
        record["time"] = time.time()
        self._file.write(json.dumps(record) + "\n")

    def on_train_step_end(self, ctx: RunContext) -> None:
        if ctx.global_step % self.collect_freq == 0 and ctx.loss is not None:
            self._write({"kind": "step", "epoch": ctx.epoch, "step": ctx.step,
                         "global_step": ctx.global_step, "loss": float(ctx.loss),
                         "lr": ctx.optimizer.param_groups[0]["lr"] if ctx.optimizer else None})

    def on_train_epoch_end(self, ctx: RunContext) -> None:
        self._write({"kind": "epoch", "epoch": ctx.epoch, "global_step": ctx.global_step,
                     "loss": float(ctx.loss) if ctx.loss is not None else None})
        self._file.flush()

    def on_eval_end(self, ctx: RunContext) -> None:
        self._write({"kind": "eval", "epoch": ctx.epoch, "global_step": ctx.global_step,
                     **{k: float(v) for k, v in ctx.metrics.items()}})

    def on_train_end(self, ctx: RunContext) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
