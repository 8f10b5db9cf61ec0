"""BackupAndRestore: keep a backup of the full state and pick it up when training restarts.

Unlike MindSpore's (weights only), the epoch, step, data position, RNG and
callback state are restored too. Put it last in the callback list so the
backup taken at an epoch's end includes the other callbacks' epoch-end work.
"""

from __future__ import annotations

import os

from torchresume.storage.confine import refuse_link
from torchresume.train.callback import Callback, RunContext


class BackupAndRestore(Callback):
    """Keep a backup of the full training state in ``backup_dir`` and resume from it on restart.

    Args:
        backup_dir: directory of the backup file (``backup.ckpt``).
        save_freq: ``"epoch"`` (at each epoch's end) or every N steps.
        delete_checkpoint: remove the backup when training ends normally.

    Example:
        ```python
        model.train(2, train_ds, callbacks=[tr.BackupAndRestore("backup")])
        ```
    """

    def __init__(self, backup_dir: str, save_freq: str | int = "epoch",
                 delete_checkpoint: bool = True) -> None:
        if save_freq != "epoch" and (isinstance(save_freq, bool) or not isinstance(save_freq, int)
                                     or save_freq < 1):
            raise ValueError(f"save_freq must be 'epoch' or a positive int, got {save_freq!r}")
        self.backup_dir, self.save_freq = backup_dir, save_freq
        self.delete_checkpoint = delete_checkpoint
        self.path = os.path.join(backup_dir, "backup.ckpt")

    def on_train_begin(self, ctx: RunContext) -> None:
        refuse_link(self.path, self.path)  # a link there (to another run's checkpoint) is never resumed from
        if os.path.exists(self.path) and not ctx.resumed_from:
            ctx.run_state().restore(self.path, ctx)

    def on_train_step_end(self, ctx: RunContext) -> None:
        if isinstance(self.save_freq, int) and ctx.global_step % self.save_freq == 0:
            self._save(ctx, epoch_end_done=False)

    def on_train_epoch_end(self, ctx: RunContext) -> None:
        if self.save_freq == "epoch":
            self._save(ctx, epoch_end_done=True)

    def _save(self, ctx: RunContext, *, epoch_end_done: bool) -> None:
        os.makedirs(self.backup_dir, exist_ok=True)
        ctx.run_state().save_to(self.path, ctx, epoch_end_done=epoch_end_done)

    def on_train_end(self, ctx: RunContext) -> None:
        if self.delete_checkpoint and os.path.exists(self.path):
            os.remove(self.path)
