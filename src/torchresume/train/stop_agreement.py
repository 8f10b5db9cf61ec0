"""StopAgreement: under torchrun, every rank stops for a signal at the same step.

A stop signal (SIGTERM from the launcher, SIGINT, SIGUSR1) reaches the ranks
at different moments. Each rank only records it; at every step boundary the
ranks all-reduce (MAX) their recorded signal, so all of them see the same
agreed value at the same step, set ``ctx.stop_signal``, save that step and
exit 128 + signal. A signal that lands after a boundary's all-reduce is
agreed at the next boundary, never half-seen. Added first by
``train.distributed.prepare``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from torchresume import signals
from torchresume.log import log
from torchresume.signals import STOP_SIGNALS, StopSignals
from torchresume.train.callback import Callback, RunContext


class StopAgreement(Callback):
    """Records stop signals locally; agrees on them with every rank at each step end."""

    def __init__(self, device: torch.device, enabled: bool = True) -> None:
        self.device = device
        self.signals = StopSignals(STOP_SIGNALS, enabled=enabled, on_signal=self._noted)

    @staticmethod
    def _noted(signum: int) -> None:
        log.info("%s received; all ranks stop at the next step they agree on", signals.name(signum))

    def on_train_begin(self, ctx: RunContext) -> None:
        self.signals.install()  # replaces Model's per-process handlers while training

    def agree(self) -> int:
        """Collective: the largest stop signal any rank has recorded, 0 for none."""
        flag = torch.tensor([self.signals.received or 0], dtype=torch.int64, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def on_train_step_end(self, ctx: RunContext) -> None:
        agreed = self.agree()
        if agreed:
            ctx.stop_signal = agreed

    def on_train_end(self, ctx: RunContext) -> None:
        self.signals.uninstall()

    def on_exception(self, ctx: RunContext, exc: BaseException) -> None:
        self.signals.uninstall()


__all__ = ["StopAgreement"]
