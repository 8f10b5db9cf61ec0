"""Retention rules as small policy objects, computed from what is on disk.

A policy sees one family's committed checkpoints, oldest first, and returns
the paths it wants kept; the manager deletes what no policy keeps, never the
newest valid file, and only after a new checkpoint is committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from torchresume.catalog import Entry


class RetentionPolicy(Protocol):
    def keep(self, entries: Sequence[Entry]) -> set[str]: ...


@dataclass(frozen=True)
class KeepLast:
    """Keep the newest ``n`` checkpoints.

    Example:
        ```python
        mgr = tr.CheckpointManager("runs/keep-last", model=net, prefix="net", keep=[tr.KeepLast(2)])
        ```
    """

    n: int

    def keep(self, entries: Sequence[Entry]) -> set[str]:
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

    def keep(self, entries: Sequence[Entry]) -> set[str]:
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

    def keep(self, entries: Sequence[Entry]) -> set[str]:
        scored = [e for e in entries if e.metrics.get(self.metric) is not None]
        scored.sort(key=lambda e: e.metrics[self.metric], reverse=self.mode == "max")
        return {e.path for e in scored[: self.n]}
