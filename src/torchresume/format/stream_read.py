"""One-pass verified read of a native file's tensor data: bytes are hashed as they arrive.

Every tensor's xxh3 is computed chunk by chunk (16 MiB) in file order, a tensor
spanning chunks through a streaming hasher, and checked as soon as its last
byte arrived; there is no second pass over memory.

* A local file is mapped copy-on-write (``MADV_SEQUENTIAL``): the hash itself
  faults the pages in while the kernel reads ahead, and the tensors are the
  page-cache pages, never copied. ``HASH_THREADS`` > 1 hashes that many
  contiguous slices at once, each front to back (several read-ahead streams).
  This beats ``readinto`` into preallocated memory cold and warm where first
  touch of fresh memory is slow (a VM), and even a copy into memory already
  touched costs more than the hash (benchmarks/cold_load.py; figures on
  docs/benchmarks.md). Unverified loads stay lazy.
* Any other file object (an object-storage reader) is read with ``readinto``
  into one preallocated buffer: a thread fills chunk ``i + 1`` (the read
  releases the interpreter) while chunk ``i``, still hot, is hashed here
  (xxhash releases the interpreter on large inputs too).
"""

from __future__ import annotations

import contextlib
import io
import mmap
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO, Protocol

import torch
import xxhash

from torchresume.errors import CorruptCheckpointError


class PlacedTensor(Protocol):
    """One tensor's bytes ``[begin, end)`` in the data region (``native.TensorPlace``)."""

    @property
    def name(self) -> str: ...
    @property
    def begin(self) -> int: ...
    @property
    def end(self) -> int: ...


class DataRegion(Protocol):
    """Where the data region lies and its tensors (``native.Header``, which imports this module)."""

    @property
    def entries(self) -> Sequence[PlacedTensor]: ...
    @property
    def data_start(self) -> int: ...
    @property
    def data_size(self) -> int: ...


CHUNK_BYTES = 16 * 1024 * 1024  # large enough for full-speed reads, small enough to stay in L2/L3
# Slices of a mapped file hashed at once. 1: with few cores 2 threads were slower, warm and cold
# (measured side by side; docs/benchmarks.md, "Loading: hashing threads").
HASH_THREADS = 1


class _Hashers:
    """The per-tensor xxh3 states, fed chunk by chunk in file order; checks each tensor at its end."""

    def __init__(self, entries: Sequence[PlacedTensor], digests: dict[str, str], where: str) -> None:
        self._entries = sorted(entries, key=lambda e: e.begin)
        self._digests = digests
        self._where = where
        self._next = 0  # index of the first entry not yet complete
        self._open: Any = None  # the streaming hasher of a tensor split across chunks

    def update(self, view: memoryview, begin: int, end: int) -> None:
        """Hash data bytes ``[begin, end)`` of ``view`` (offsets relative to the data start)."""
        while self._next < len(self._entries):
            e = self._entries[self._next]
            if e.begin >= end:
                return
            lo, hi = max(e.begin, begin), min(e.end, end)
            if self._open is None and lo == e.begin and hi == e.end:
                self._check(e, xxhash.xxh3_64_hexdigest(view[lo:hi]))
            else:
                self._open = self._open or xxhash.xxh3_64()
                self._open.update(view[lo:hi])
                if hi < e.end:
                    return
                self._check(e, self._open.hexdigest())
                self._open = None
            self._next += 1

    def finish(self, view: memoryview) -> None:
        """Check what is left: only empty tensors at the very end of the data can be."""
        for e in self._entries[self._next:]:
            self._check(e, xxhash.xxh3_64_hexdigest(view[e.begin:e.end]))
        self._next = len(self._entries)

    def _check(self, e: PlacedTensor, got: str) -> None:
        if got != self._digests[e.name]:
            raise CorruptCheckpointError(f"{self._where}: checksum mismatch in tensor {e.name!r}; "
                                         "the data is damaged (bit flip or partial write)")


def read_data(f: BinaryIO, header: DataRegion, where: str, digests: dict[str, str] | None) -> torch.Tensor:
    """The data region of ``f`` as one uint8 tensor; every tensor in ``digests`` verified on the way."""
    if not header.data_size:
        return torch.empty(0, dtype=torch.uint8)
    hashers = _Hashers(header.entries, digests, where) if digests is not None else None
    mapped = _map(f, header)
    if mapped is not None:
        mm, buf = mapped
        if digests is not None:  # unverified: stay lazy, pages come in when used
            _hash_mapped(memoryview(mm)[header.data_start:], header.entries, digests, where)
        return buf
    buf = torch.empty(header.data_size, dtype=torch.uint8)
    view = memoryview(buf.numpy()).cast("B")  # type: ignore[arg-type]
    _pipeline(_stream_filler(f, header, view, where), header.data_size, view, hashers)
    return buf


def _hash_mapped(view: memoryview, entries: Sequence[PlacedTensor], digests: dict[str, str], where: str) -> None:
    """Hash a mapped data region in HASH_THREADS contiguous slices at once (xxhash releases the
    interpreter), each read front to back, so the kernel reads ahead on several streams."""
    threads = HASH_THREADS if view.nbytes >= 4 * CHUNK_BYTES else 1
    groups = _slices(sorted(entries, key=lambda e: e.begin), threads)
    if len(groups) == 1:
        _hash_slice(view, groups[0], digests, where)
        return
    with ThreadPoolExecutor(len(groups), thread_name_prefix="torchresume-hash") as pool:
        futures = [pool.submit(_hash_slice, view, g, digests, where) for g in groups]
        for future in futures:  # the first damaged tensor in file order is the one reported
            future.result()


def _hash_slice(view: memoryview, entries: Sequence[PlacedTensor], digests: dict[str, str], where: str) -> None:
    hashers = _Hashers(entries, digests, where)
    begin, end = entries[0].begin, entries[-1].end
    for a in range(begin, end, CHUNK_BYTES):  # hashing faults the pages in
        hashers.update(view, a, min(a + CHUNK_BYTES, end))
    hashers.finish(view)


def _slices(entries: Sequence[PlacedTensor], n: int) -> list[list[PlacedTensor]]:
    """``entries`` (in file order) cut into at most ``n`` runs of about equal bytes."""
    total = sum(e.end - e.begin for e in entries) or 1
    groups: list[list[PlacedTensor]] = [[]]
    for e in entries:
        if groups[-1] and len(groups) < n and e.begin >= total * len(groups) / n:
            groups.append([])
        groups[-1].append(e)
    return groups


def _pipeline(fill: Callable[[int, int], None], size: int, view: memoryview, hashers: _Hashers | None) -> None:
    """Bring chunk i+1 in (a thread: the syscall releases the interpreter) while chunk i is hashed here."""
    bounds = [(a, min(a + CHUNK_BYTES, size)) for a in range(0, size, CHUNK_BYTES)]
    if hashers is None:
        for a, b in bounds:
            fill(a, b)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="torchresume-read") as pool:
        pending = pool.submit(fill, *bounds[0])
        for i, (a, b) in enumerate(bounds):
            pending.result()
            if i + 1 < len(bounds):
                pending = pool.submit(fill, *bounds[i + 1])
            hashers.update(view, a, b)
    hashers.finish(view)


def _map(f: BinaryIO, header: DataRegion) -> tuple[mmap.mmap, torch.Tensor] | None:
    """Map a local file copy-on-write: pages come straight from the page cache, never copied.

    Checkpoint files are replaced by rename, never rewritten in place, so the
    mapping cannot change under us. Returns None where mapping is impossible.
    """
    try:
        fd = f.fileno()
        mm = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    if len(mm) != header.data_start + header.data_size:
        mm.close()
        return None
    with contextlib.suppress(OSError, AttributeError):
        mm.madvise(mmap.MADV_SEQUENTIAL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = torch.frombuffer(mm, dtype=torch.uint8)  # keeps ``mm`` alive
    return mm, whole[header.data_start:]


def _stream_filler(f: BinaryIO, header: DataRegion, view: memoryview, where: str) -> Callable[[int, int], None]:
    """Sequential ``readinto`` on any file object (chunks are asked for in order)."""
    f.seek(header.data_start)

    def fill(a: int, b: int) -> None:
        while a < b:
            n = f.readinto(view[a:b])  # type: ignore[attr-defined]
            if not n:
                raise _truncated(where, a, header.data_size)
            a += n
    return fill


def _truncated(where: str, got: int, size: int) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"{where}: truncated: file ended after {got} of {size} data bytes")
