"""Large local writes that bypass the page cache (O_DIRECT), through one aligned bounce buffer.

Why: a buffered write copies every byte into page-cache pages the kernel
allocates for it, and in a VM those pages can be new guest memory each time
(first touch runs at a fraction of memcpy speed), so a buffered write of a large
checkpoint costs a lot of CPU before the fsync even begins. That CPU is taken
from training while an async save runs. With O_DIRECT the disk reads the bytes
straight from our buffer: the CPU cost is one copy into a warm, reused 16 MiB
buffer (numpy's copy releases the interpreter) plus the syscalls, a fraction of
the buffered cost (benchmarks/save_stall.py's "writer CPU" line; figures on
docs/benchmarks.md), and
page-aligned data at a block-aligned file offset (a staged async save: see
staging.py) is written straight from its memory with no copy at all.

O_DIRECT wants the buffer address, the length and the file offset aligned to
the device's block size: the bounce buffer is an anonymous mapping (page
aligned), every write but the last is a full buffer, and the last is padded to
``ALIGN`` with zeros and the file truncated back to its true length. A file
system that refuses O_DIRECT (at open or at the first write: EINVAL) gets the
same bytes buffered; nothing else changes. Two bounce buffers alternate: a helper
thread writes one while the caller fills the other, so the copy is hidden behind
the disk (benchmarks/save_load.py, "O_DIRECT / buffered"). Durability is the caller's fsync,
as for a buffered file: O_DIRECT does not flush the device's write cache.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from torchresume.storage.base import Buffer

ALIGN = 4096  # a multiple of every logical block size in use (512 and 4096)
BOUNCE_BYTES = 16 * 1024 * 1024
DIRECT_MIN_BYTES = 32 * 1024 * 1024  # smaller files: buffered (the bounce buffer would cost more)
DIRECT_FROM_MEMORY_MIN = 1 << 20  # page-aligned data at least this large is written without a copy
IN_PLACE_BYTES = 64 * 1024 * 1024  # one write from the caller's memory
_SMALL_COPY = 64 * 1024  # below this a plain memoryview copy beats numpy's call overhead


def open_direct(path: str, flags: int, mode: int) -> tuple[int, bool]:
    """Open ``path`` with O_DIRECT where the file system allows it: (fd, direct?)."""
    direct = getattr(os, "O_DIRECT", 0)
    if direct:
        try:
            return os.open(path, flags | direct, mode), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
    return os.open(path, flags, mode), False


class DirectSink:
    """Appends bytes to ``fd`` (opened with O_DIRECT) in full, aligned bounce-buffer writes.

    Two bounce buffers: while one is written by a helper thread (the write releases
    the interpreter), the caller copies into the other, so the copy costs no wall
    time. Only one write is in flight at a time, so the file grows in order.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._maps = [mmap.mmap(-1, BOUNCE_BYTES) for _ in range(2)]
        self._arrays = [np.frombuffer(m, dtype=np.uint8) for m in self._maps]
        self._cur = 0  # the buffer being filled
        self._fill = 0
        self._io = ThreadPoolExecutor(1, thread_name_prefix="torchresume-direct")
        self._pending: Future[None] | None = None
        self.direct = True
        self.copied = 0  # bytes that went through a bounce buffer
        self.in_place = 0  # bytes written straight from the caller's memory

    def write(self, data: Buffer) -> int:
        """Take all of ``data``; returns how many bytes were taken (all, or an OSError)."""
        src = memoryview(data).cast("B")
        pos = self._write_in_place(src)
        while pos < src.nbytes:
            n = min(BOUNCE_BYTES - self._fill, src.nbytes - pos)
            self._copy(src[pos:pos + n], self._fill)
            self.copied += n
            self._fill += n
            pos += n
            if self._fill == BOUNCE_BYTES:
                self._flush(BOUNCE_BYTES)
        return pos

    def finish(self, length: int) -> None:
        """Write what is left (padded to ALIGN) and cut the file to ``length`` bytes."""
        if self._fill:
            padded = -(-self._fill // ALIGN) * ALIGN
            self._arrays[self._cur][self._fill:padded] = 0
            self._flush(padded)
        self._wait()
        os.ftruncate(self._fd, length)
        self.close()

    def close(self) -> None:
        """Stop the helper thread (after its write) and free the buffers; errors were raised already."""
        with contextlib.suppress(OSError):
            self._wait()
        self._io.shutdown(wait=True)
        self._arrays = []  # drop the exports before closing the maps
        # A failed write's traceback may still hold a view of a buffer; then that map is
        # freed with its last reference instead of now.
        for m in self._maps:
            with contextlib.suppress(BufferError):
                m.close()

    def _write_in_place(self, src: memoryview) -> int:
        """Send the aligned whole blocks at the start of ``src`` straight from its memory.

        Possible when ``src`` starts on a page and the file so far ends on a block
        (the staged data region after a page-padded header): no copy at all.
        """
        if src.nbytes < DIRECT_FROM_MEMORY_MIN or self._fill % ALIGN:
            return 0
        if np.frombuffer(src, dtype=np.uint8).ctypes.data % ALIGN:
            return 0
        if self._fill:
            self._flush(self._fill)
        self._wait()
        if not self.direct:
            return 0
        whole = src.nbytes - src.nbytes % ALIGN
        done = 0
        while done < whole:
            done += self._write(src[done:min(whole, done + IN_PLACE_BYTES)])
        self.in_place += done
        return done

    def _copy(self, src: memoryview, at: int) -> None:
        if src.nbytes < _SMALL_COPY:
            self._maps[self._cur][at:at + src.nbytes] = src
        else:
            np.copyto(self._arrays[self._cur][at:at + src.nbytes], np.frombuffer(src, dtype=np.uint8))

    def _flush(self, length: int) -> None:
        """Hand the current buffer to the helper thread and go on filling the other one."""
        self._wait()  # the other buffer's write: it must be done before that buffer is reused
        self._pending = self._io.submit(self._write_buffer, self._cur, length)
        self._cur ^= 1
        self._fill = 0

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()  # re-raises the write's OSError here, in the caller

    def _write_buffer(self, index: int, length: int) -> None:
        view = memoryview(self._maps[index])[:length]
        try:
            done = 0
            while done < length:
                done += self._write(view[done:])
        finally:
            view.release()

    def _write(self, view: memoryview) -> int:
        try:
            return os.write(self._fd, view)
        except OSError as exc:
            if exc.errno != errno.EINVAL or not self.direct:
                raise
            # The file system took O_DIRECT at open but not for this write: go on buffered.
            flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
            fcntl.fcntl(self._fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
            self.direct = False
            return os.write(self._fd, view)
