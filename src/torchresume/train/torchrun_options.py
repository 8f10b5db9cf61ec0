"""Which CheckpointConfig options a torchrun run honours, and the refusal of the others.

Under torchrun (``WORLD_SIZE`` > 1) ``ModelCheckpoint``'s manager saves sharded checkpoints
(``CheckpointManager``'s sharded layout) instead of one file per save. The
project's rule: an option a mode cannot honour is refused with a typed error, never dropped.
``check(config)`` raises ``UnsupportedUnderTorchrunError`` (a ``CheckpointConfigError``) naming
the first option set that the sharded path cannot honour yet, what to do instead, and nothing
else. It reads the config alone, so every rank raises the same error at the same point, before
any collective and before any rank writes a byte: the job ends at once, no rank waits for another.

``HONOURED`` says how each other parameter of ``CheckpointConfig.__init__`` is carried out
under torchrun; ``REFUSED`` lists the refusals. Every parameter is in exactly one of the two
(tests/distributed/test_torchrun_parity.py fails on a parameter in neither).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torchresume.errors import UnsupportedUnderTorchrunError
from torchresume.train.callback import Callback
from torchresume.train.checkpoint_config import CheckpointConfig
from torchresume.train.model_checkpoint import ModelCheckpoint

HONOURED: dict[str, str] = {
    "save_checkpoint_steps": "the same step schedule on every rank",
    "save_checkpoint_seconds": "each rank's 'period over' flag all-reduced (MAX): every rank saves at the same step",
    "keep_checkpoint_max": "retention keeps the newest N committed checkpoints (KeepLast, as in one process)",
    "keep_checkpoint_per_n_minutes": "retention keeps one committed checkpoint per N minutes plus the newest "
                                     "(KeepEveryNMinutes, as in one process)",
    "integrated_save": "only the default is accepted, by CheckpointConfig itself, as in one process",
    "async_save": "staged on every rank and written in the background (ShardedStore)",
    "append_info": "stored in the manifest's 'append', shown by `torchresume inspect`",
    "enc_key": "every part file (shards and each rank's state) AES-GCM encrypted; restore needs the key",
    "enc_mode": "AES-GCM, the one mode of torchresume files (CheckpointConfig checks it with enc_key)",
    "remove_redundancy": "only the default is accepted, by CheckpointConfig itself, as in one process",
    "monitor": "rank 0's metric broadcast to every rank; a better one saves {prefix}-best-E_S.ckpt collectively",
    "mode": "which metric is better, as in one process",
    "keep_best_max": "retention of {prefix}-best keeps the best N (KeepBest, as in one process)",
    "overlap": "each rank's copy of its parameter shards and optimizer state overlaps its next step; "
               "its optimizer.step waits for it",
    "on_busy": "'skip' is agreed: a save due while any rank's background save runs is skipped by every rank",
    "save_deadline_s": "each rank's time to write its part; a rank past it makes every rank abort the save "
                       "(SaveDeadlineError naming it), nothing committed",
    "on_save_deadline": "after a save aborted at its deadline, every rank alike warns and trains on ('continue') "
                        "or raises ('stop')",
}


@dataclass(frozen=True)
class Refusal:
    """One option the sharded path refuses: when it counts as set, and the message's parts."""

    option: str
    is_set: Callable[[CheckpointConfig], bool]
    shown: Callable[[CheckpointConfig], str]
    why: str
    instead: str

    def message(self, config: CheckpointConfig) -> str:
        return (f"{self.option}={self.shown(config)} is not supported under torchrun yet ({self.why}); "
                f"{self.instead}")


def _value(name: str) -> Callable[[CheckpointConfig], str]:
    def shown(config: CheckpointConfig) -> str:
        value: Any = getattr(config, name)
        return f"{value:g}" if isinstance(value, float) else repr(value)
    return shown


REFUSED: tuple[Refusal, ...] = (
    Refusal("saved_network", lambda c: c.saved_network is not None,
            lambda c: f"<{type(c.saved_network).__name__}>",
            "a sharded checkpoint saves the trained network and its optimizer through DCP",
            "leave saved_network=None, or train in one process"),
    Refusal("exception_save", lambda c: bool(c.exception_save), _value("exception_save"),
            "a breakpoint save needs every rank and one of them failed; the newest committed checkpoint "
            "resumes", "leave exception_save=False, or train in one process"),
    Refusal("crc_check", lambda c: bool(c.crc_check), _value("crc_check"),
            "it adds MindSpore's CRC32 to format='ckpt' files; the parts of a sharded checkpoint always "
            "carry per-tensor checksums, verified on every read",
            "leave crc_check=False, or train in one process"),
    Refusal("format", lambda c: c.format == "ckpt", _value("format"),
            "a MindSpore .ckpt is one file, a torchrun checkpoint is parts written by every rank",
            "leave format=None, or train in one process"),
    Refusal("write_mb_per_s", lambda c: c.write_mb_per_s is not None, _value("write_mb_per_s"),
            "each rank writes its part of a sharded save at full speed",
            "leave write_mb_per_s=None, or train in one process"),
)


def check(config: CheckpointConfig) -> None:
    """Raise UnsupportedUnderTorchrunError for the first option set that torchrun cannot honour yet."""
    for refusal in REFUSED:
        if refusal.is_set(config):
            raise UnsupportedUnderTorchrunError(refusal.message(config))


def check_callbacks(callbacks: Sequence[Callback] | Callback | None) -> None:
    """``check`` the config of every ModelCheckpoint among ``callbacks`` (what Model.train/fit was given).

    Called by ``train.distributed.prepare`` first, before the process group is joined.
    """
    items = [callbacks] if isinstance(callbacks, Callback) else list(callbacks or [])
    for cb in items:
        if isinstance(cb, ModelCheckpoint):
            check(cb.config)


__all__ = ["HONOURED", "REFUSED", "Refusal", "check", "check_callbacks"]
