"""How a failed sharded save is told: which ranks failed or were late, in one line every rank raises.

Also the save deadline against the process group's timeout: the default is shortened below it, an
explicit deadline the timeout would cut short is refused.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException

from torchresume.errors import CheckpointConfigError, SaveDeadlineError
from torchresume.log import log
from torchresume.save_slot import DEFAULT_SAVE_DEADLINE_S, is_default_deadline
from torchresume.world import process_group_up


def _failures(exc: CheckpointException) -> dict[int, BaseException]:
    """Each failed rank's exception."""
    return {rank: failure[0] if isinstance(failure, tuple) else failure for rank, failure in exc.failures.items()}


def late_ranks(exc: CheckpointException) -> list[int]:
    """The ranks that did not write their part within the save's deadline."""
    return sorted(rank for rank, err in _failures(exc).items() if isinstance(err, SaveDeadlineError))


def rank_errors(exc: CheckpointException, skip: Sequence[int] = ()) -> str:
    """Each failed rank but those in ``skip`` with its error's first line, ``; ``-separated."""
    return "; ".join(f"rank {rank}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                     for rank, err in sorted(_failures(exc).items()) if rank not in skip)


def failure_line(path: str, exc: CheckpointException) -> str:
    """One line naming each failed rank and its error."""
    return (f"{path}: sharded save failed ({rank_errors(exc)}); nothing was committed and the previous "
            "checkpoint stays the newest; fix the storage of the failing rank and save again")


def deadline_line(path: str, late: Sequence[int], deadline_s: float, kept: str, others: str = "") -> str:
    """One line for a save aborted because ranks ``late`` did not write their parts in time
    (``kept``: what stays the newest, said by ``_newest_kept``)."""
    one = len(late) == 1
    who = (f"rank {late[0]} did not write its part" if one else
           f"ranks {', '.join(map(str, late))} did not write their parts")
    also = f" (also failed: {others})" if others else ""
    its, whose = ("its", "that rank's") if one else ("their", "those ranks'")
    return (f"{path}: save aborted: {who} within save_deadline_s={deadline_s:g} ({its} storage hung or is too "
            f"slow){also}; nothing was committed and {kept}; check {whose} storage, or raise save_deadline_s "
            f"if {its} writes are only slow")


def _group_timeout_s() -> float | None:
    """The default process group's timeout in seconds, where torch lets it be read (else None)."""
    if not process_group_up():
        return None
    try:
        pg = dist.distributed_c10d._get_default_group()
        device = torch.device("cuda" if dist.get_backend() == "nccl" else "cpu")
        return float(pg._get_backend(device).options._timeout.total_seconds())
    except (AttributeError, RuntimeError, ValueError):
        return None


def below_timeout(save_deadline_s: float | None) -> float | None:
    """The deadline to use: the default is shortened to half a process-group timeout not longer than
    it; a deadline passed explicitly that the timeout would cut short is refused (the ranks wait for a
    late one in a collective, which would time out first and end the job)."""
    timeout = _group_timeout_s()
    if save_deadline_s is None or timeout is None or save_deadline_s < timeout:
        return save_deadline_s
    if is_default_deadline(save_deadline_s):
        log.info("save_deadline_s: %g s, half the process group's timeout (%g s; the default %g s is not below it)",
                 timeout / 2, timeout, save_deadline_s)
        return timeout / 2
    raise CheckpointConfigError(
        f"save_deadline_s={save_deadline_s:g} is not below the process group's timeout ({timeout:g} s): "
        "the ranks wait for a late one in a collective, which would time out first and end the job; "
        f"pass a smaller save_deadline_s (default {DEFAULT_SAVE_DEADLINE_S:g}) or a longer timeout to "
        "init_process_group")

__all__ = ["below_timeout", "deadline_line", "failure_line", "late_ranks", "rank_errors"]
