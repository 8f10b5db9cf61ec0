"""Parallel ranged reads of one stored object, exposed as an ordinary read-only file.

``RangedReader`` keeps up to ``streams`` range GETs of ``part`` bytes in flight
ahead of the position being read, so a front-to-back read (a checkpoint load)
runs as fast as several connections together, with memory bounded by
``streams + 1`` parts whatever the object's size. A seek inside the window
keeps it; a seek elsewhere drops it and starts a new one there. Each range is
fetched by the ``fetch(begin, end, into)`` it was given (which retries on its own),
so a transient failure costs one range, not the whole download.

``fetch`` writes the range into a buffer of ours, and a buffer whose range was read
is the next range's: a new buffer per range (as ``bytes`` returned by a fetch were)
is fresh memory, whose page faults cost more CPU here than the copy out of it.
"""

from __future__ import annotations

import io
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from torchresume.errors import StorageError

Fetch = Callable[[int, int, memoryview], int]  # fills ``into`` (end - begin bytes); the length the server sent


class _Range:
    """Bytes ``[begin, end)`` of the object, being fetched into ``buffer`` or fetched."""

    def __init__(self, begin: int, end: int, buffer: bytearray, future: Future[int]) -> None:
        self.begin, self.end, self.buffer, self.future = begin, end, buffer, future

    def data(self, where: str) -> memoryview:
        sent = self.future.result()
        if sent != self.end - self.begin:
            raise StorageError(f"{where}: a ranged read of bytes [{self.begin}, {self.end}) returned "
                               f"{sent} bytes; the object changed or the server ignores Range")
        return memoryview(self.buffer)


class RangedReader(io.RawIOBase):
    """A seekable, read-only view of an object of ``size`` bytes, read ahead in parallel."""

    def __init__(self, fetch: Fetch, size: int, where: str, *, part: int, streams: int) -> None:
        super().__init__()
        self._fetch, self.size, self.where = fetch, size, where
        self._part, self._streams = part, streams
        self._pool = ThreadPoolExecutor(streams, thread_name_prefix="torchresume-get")
        self._window: deque[_Range] = deque()
        self._free: list[bytearray] = []  # buffers of ranges already read, for the next ones
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        if self._pos >= self.size or not view.nbytes:
            return 0
        current = self._range_at(self._pos)
        data = current.data(self.where)
        lo = self._pos - current.begin
        n = min(view.nbytes, current.end - self._pos)
        view[:n] = data[lo:lo + n]  # one copy, straight into the caller's buffer
        self._pos += n
        return n

    def readall(self) -> bytes:
        """The rest of the object, in range-sized copies (io's default reads 8 KiB at a time)."""
        out = bytearray(max(0, self.size - self._pos))
        view, got = memoryview(out), 0
        while got < len(out):
            got += self.readinto(view[got:])
        return bytes(out)

    def _range_at(self, pos: int) -> _Range:
        """The window's range holding ``pos``, with the window slid (or restarted) to start there."""
        while self._window and self._window[0].end <= pos:
            self._recycle(self._window.popleft())
        if not self._window or self._window[0].begin > pos:
            self._drop_window()
            self._schedule(pos - pos % self._part)
        self._top_up()
        return self._window[0]

    def _schedule(self, begin: int) -> None:
        end = min(begin + self._part, self.size)
        buffer = self._free.pop() if end - begin == self._part and self._free else bytearray(end - begin)
        future = self._pool.submit(self._fetch, begin, end, memoryview(buffer))
        self._window.append(_Range(begin, end, buffer, future))

    def _recycle(self, r: _Range) -> None:
        """Keep a full-size buffer no fetch writes into any more (done, or cancelled before it began)."""
        if len(r.buffer) == self._part and (r.future.cancel() or r.future.done()):
            self._free.append(r.buffer)

    def _top_up(self) -> None:
        while len(self._window) < self._streams and self._window[-1].end < self.size:
            self._schedule(self._window[-1].end)

    def _drop_window(self) -> None:
        for r in self._window:
            self._recycle(r)  # cancels it if not begun; one being fetched keeps its buffer
        self._window.clear()

    def close(self) -> None:
        if not self.closed:
            self._drop_window()
            self._pool.shutdown(wait=True, cancel_futures=True)
        super().close()


def open_ranged(fetch: Fetch, size: int, where: str, *, part: int, streams: int) -> io.BufferedReader:
    """A buffered file over a RangedReader: small reads are cheap, large ``readinto`` goes straight through."""
    return io.BufferedReader(RangedReader(fetch, size, where, part=part, streams=streams),
                             buffer_size=1 << 20)
