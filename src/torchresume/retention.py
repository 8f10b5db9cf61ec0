"""Retention: rules as small policy objects, and the one function that applies them.

A policy sees one family's committed checkpoints, oldest first, and returns
the paths it wants kept; ``apply`` deletes what no policy keeps, never the
newest, never the checkpoint just committed. Both managers and ``prune``
call ``apply``, and only after a new checkpoint is committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from torchresume import catalog, files
from torchresume.catalog import ListedCheckpoint


class RetentionPolicy(Protocol):
    def keep(self, entries: Sequence[ListedCheckpoint]) -> set[str]: ...


@dataclass(frozen=True)
class KeepLast:
    """Keep the newest ``n`` checkpoints.

    Example:
        ```python
        mgr = tr.CheckpointManager("runs/keep-last", model=net, prefix="net", keep=[tr.KeepLast(2)])
        ```
    """

    n: int

    def keep(self, entries: Sequence[ListedCheckpoint]) -> set[str]:
        return {e.path for e in entries[-self.n:]} if self.n > 0 else set()


@dataclass(frozen=True)
class KeepEveryNMinutes:
    """Keep one checkpoint per ``minutes`` of wall time (by file time), plus the newest.

    Example:
        ```python
        keep = [tr.KeepLast(3), tr.KeepEveryNMinutes(60)]     # the last 3, and one an hour
        mgr = tr.CheckpointManager("runs/keep-hourly", model=net, prefix="net", keep=keep)
        ```
    """

    minutes: float

    def keep(self, entries: Sequence[ListedCheckpoint]) -> set[str]:
        kept: set[str] = set()
        last = None
        for e in entries:
            if last is None or e.when - last >= self.minutes * 60:
                kept.add(e.path)
                last = e.when
        if entries:
            kept.add(entries[-1].path)
        return kept


@dataclass(frozen=True)
class KeepBest:
    """Keep the ``n`` checkpoints with the best ``metric`` recorded in their info.

    Example:
        ```python
        mgr = tr.CheckpointManager("runs/keep-best", model=net, prefix="net",
                                   keep=[tr.KeepLast(1), tr.KeepBest(2, "acc", mode="max")])
        mgr.save(epoch=1, step=1, info={"metrics": {"acc": 0.91}})   # the metric retention reads
        mgr.close()
        ```
    """

    n: int
    metric: str
    mode: str = "max"

    def keep(self, entries: Sequence[ListedCheckpoint]) -> set[str]:
        scored = [e for e in entries if e.metrics.get(self.metric) is not None]
        scored.sort(key=lambda e: e.metrics[self.metric], reverse=self.mode == "max")
        return {e.path for e in scored[: self.n]}


@dataclass(frozen=True)
class KeepNewestVerified:
    """Keep the newest checkpoint that reads back whole (checksums; ``dec_key`` for encrypted ones),
    even when newer damaged ones fill the other policies' quota: what ``prune`` adds."""

    dec_key: bytes | None = None

    def keep(self, entries: Sequence[ListedCheckpoint]) -> set[str]:
        for e in reversed(entries):
            if e.valid and files.verify(e.path, self.dec_key).valid:
                return {e.path}
        return set()


def apply(entries: Sequence[ListedCheckpoint], policies: Sequence[RetentionPolicy],
          protect: str | None = None) -> list[str]:
    """Delete the checkpoints of one family (a prefix) that no policy keeps; returns their paths.

    Breakpoints are never retention's; the newest entry and ``protect`` (the checkpoint just
    committed, which a listing may not show yet) always stay.
    """
    family = sorted((e for e in entries if not e.breakpoint), key=ListedCheckpoint.order_key)
    if not policies or not family:
        return []
    kept = {family[-1].path, *([protect] if protect else [])}
    for policy in policies:
        kept |= policy.keep(family)
    doomed = [e.path for e in family if e.path not in kept]
    for path in doomed:
        catalog.delete(path)
    return doomed
