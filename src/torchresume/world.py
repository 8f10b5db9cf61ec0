"""World: this process's place in a job and the few collectives checkpointing needs.

One object answers "am I distributed?" for every caller: the manager, the harness and the
integrations. In one process (no initialised process group, or a group of one) it is trivial:
every collective returns its own argument and no rank waits. Under torchrun it is the default
process group's rank and size, and each collective is the smallest one that keeps ranks alike:
rank 0's answer on every rank, a flag true on any rank, one rank's error raised on all.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
CPU = torch.device("cpu")


def process_group_up() -> bool:
    """Whether torch.distributed has an initialised default process group."""
    return dist.is_available() and dist.is_initialized()


@dataclass(frozen=True)
class World:
    """Rank and size of this process's job; ``device`` is where this rank trains and small collective
    tensors live; ``local_rank``: its index on its node (torchrun's LOCAL_RANK)."""

    rank: int = 0
    size: int = 1
    device: torch.device = CPU
    local_rank: int = 0

    @classmethod
    def current(cls, device: torch.device | None = None) -> World:
        """The default process group's world, or the one-process world when there is none."""
        if not process_group_up():
            return cls(device=device or CPU)
        if device is None:
            device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else CPU
        return cls(dist.get_rank(), dist.get_world_size(), device, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def distributed(self) -> bool:
        """More than one rank: every collective below talks to the others."""
        return self.size > 1

    @property
    def lead(self) -> bool:
        """Rank 0: the rank that holds the run lock and writes the run's own files."""
        return self.rank == 0

    def broadcast(self, value: Any, group: Any = None) -> Any:
        """Rank 0's ``value`` on every rank (of ``group``, which holds rank 0)."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, group=group)
        return box[0]

    def any(self, flag: bool, group: Any = None) -> bool:
        """True on every rank when ``flag`` is true on any."""
        return self.max(int(flag), group) > 0

    def max(self, value: int, group: Any = None) -> int:
        """The largest of every rank's ``value``, on every rank."""
        if not self.distributed:
            return value
        box = torch.tensor([value], device=self.device)
        dist.all_reduce(box, op=dist.ReduceOp.MAX, group=group)
        return int(box.item())

    def barrier(self, group: Any = None) -> None:
        if self.distributed:
            dist.barrier(group=group)

    def raise_on_every_rank(self, error: Exception | None) -> None:
        """Raise the first failing rank's error (its type and message) on every rank, so no rank
        waits in a later collective for one that failed alone."""
        if not self.distributed:
            if error is not None:
                raise error
            return
        errors: list[Any] = [None] * self.size
        dist.all_gather_object(errors, None if error is None else (type(error), str(error)))
        for failed in errors:
            if failed is not None:
                kind, message = failed
                raise kind(message) from None

    def on_rank_0(self, work: Callable[[], T]) -> T:
        """``work()`` run by rank 0 alone; its result on every rank, or its error raised on every
        rank with its type (an error that cannot travel becomes a TorchResumeError with its text)."""
        if not self.distributed:
            return work()
        box: list[Any] = [None, None]
        if self.lead:
            try:
                box[0] = work()
            except Exception as exc:
                box[1] = exc if _travels(exc) else _plain(exc)
        dist.broadcast_object_list(box, src=0)
        if box[1] is not None:
            raise box[1]
        return box[0]


def _travels(exc: BaseException) -> bool:
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return False
    return True


def _plain(exc: BaseException) -> Exception:
    from torchresume.errors import TorchResumeError
    return TorchResumeError(f"{type(exc).__name__}: {exc}")


__all__ = ["World", "process_group_up"]
