"""Resume: restores a run before it begins when Model.train/fit is given ``resume`` and no
ModelCheckpoint (which does it itself, with its own key and directory).

It is the same restore: the run's ``RunCheckpoints`` (one process or torchrun) finds what
``resume`` names and loads it.
"""

from __future__ import annotations

from torchresume.train.callback import Callback, RunContext
from torchresume.train.checkpoint_config import CheckpointConfig
from torchresume.train.model_checkpoint import storage_for


class Resume(Callback):
    """Restore-only: ``on_resume`` loads what ``ctx.resume`` names; nothing is saved."""

    def on_resume(self, ctx: RunContext) -> None:
        if ctx.resume == "auto":
            raise ValueError("resume='auto' needs a ModelCheckpoint callback to know where "
                             "checkpoints live; pass resume=<directory or checkpoint> instead")
        if ctx.resumed_from is None:
            storage_for(ctx, str(ctx.resume), CheckpointConfig(), []).resume(ctx, ctx.resume, None)


__all__ = ["Resume"]
