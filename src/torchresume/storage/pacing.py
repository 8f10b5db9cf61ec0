"""Background writes at a bounded rate: a Writer that passes bytes on at most N MB/s.

Why: in a VM the host's disk emulation may run on the guest's own CPU allowance, so
every GiB written costs a fixed amount of hypervisor steal (the steal column of
/proc/stat), whoever writes it, at any request size or speed (benchmarks/write_pacing.py;
figures on docs/benchmarks.md). Written as fast as the disk takes it, that cost lands
on the one or two training steps the write overlaps, which then run slower; spread
over 10 s (100 MB/s) it is a few percent per step. Pacing does not
make a write cheaper in total: it trades a longer write (an older newest
checkpoint if the run dies meanwhile) for steadier steps. So it is off by default
and applies only to background (async) saves, where nobody waits for the write.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

from torchresume.errors import CheckpointConfigError

PACE_CHUNK = 8 * 1024 * 1024  # bytes passed on between two looks at the clock


def check_write_rate(value: float | None, async_save: bool) -> float | None:
    """``write_mb_per_s`` (MB/s, 10**6 bytes per second) checked: None, or a positive finite number
    given with ``async_save`` (only background saves are paced). CheckpointConfigError otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise CheckpointConfigError(f"write_mb_per_s={value!r} is not a write rate; give a positive number of "
                                    "MB/s (e.g. write_mb_per_s=200) or None for no limit")
    if not async_save:
        raise CheckpointConfigError(f"write_mb_per_s={value!r} paces background saves; set async_save=True "
                                    "too, or leave write_mb_per_s=None")
    return float(value)


@dataclass
class Pace:
    """How fast one background write may go, and the switch that lifts the limit.

    ``hurry`` is set by whoever starts waiting for the write (the next save, a stop
    signal, ``wait()``, ``close()``): from then on the write runs at full speed.
    """

    bytes_per_s: float
    hurry: threading.Event = field(default_factory=threading.Event)


class Sink(Protocol):
    """What a PacedWriter wraps and is: storage/base.py's ``Writer`` (base imports this module)."""

    path: str

    def write(self, data: bytes | bytearray | memoryview) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...


class PacedWriter:
    """Wraps a Writer: ``write`` hands on PACE_CHUNK-sized pieces, pausing to stay under the rate.

    The rate is kept over the whole write (not per piece), so a slow stretch of disk is
    not followed by a pause. Commit and abort go straight through.
    """

    def __init__(self, inner: Sink, pace: Pace) -> None:
        self.inner = inner
        self.path = inner.path
        self._pace = pace
        self._start = time.monotonic()
        self.sent = 0
        self.paused = 0.0  # seconds spent pausing, for tests and reports

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        for pos in range(0, view.nbytes, PACE_CHUNK):
            piece = view[pos:pos + PACE_CHUNK]
            self.inner.write(piece)
            self.sent += piece.nbytes
            self._keep_pace()

    def _keep_pace(self) -> None:
        if self._pace.hurry.is_set():
            return
        ahead = self.sent / self._pace.bytes_per_s - (time.monotonic() - self._start)
        if ahead > 0:
            t0 = time.monotonic()
            self._pace.hurry.wait(ahead)  # returns at once when somebody starts waiting for us
            self.paused += time.monotonic() - t0

    def commit(self) -> None:
        self.inner.commit()

    def abort(self) -> None:
        self.inner.abort()
