"""Which madvise makes a cold, mapped, hashed read of a file fastest? (format/stream_read.py's choice)

Run (as root, to drop the page cache): .venv/bin/python benchmarks/cold_madvise.py [--gib 1] [--runs 3]

Writes ``--gib`` GiB of random bytes once, then, run after run with the page cache dropped
before each read: maps it copy-on-write and xxh3-hashes it in 16 MiB chunks front to back
(what a verified torchresume load does) after ``MADV_SEQUENTIAL`` (the one in use),
``MADV_WILLNEED``, both, ``MADV_POPULATE_READ`` (Linux 5.14+) over the whole file, or
``MADV_POPULATE_READ`` of chunk i+1 in a thread while chunk i is hashed. Medians.
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import xxhash

CHUNK = 16 << 20
MADV_POPULATE_READ = 22  # linux/mman.h; Python's mmap module does not name it


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def hash_all(mm: mmap.mmap, before_chunk: Callable[[int], None] | None = None) -> None:
    view = memoryview(mm)
    try:
        for a in range(0, len(mm), CHUNK):
            if before_chunk is not None:
                before_chunk(a)
            xxhash.xxh3_64_hexdigest(view[a:a + CHUNK])
    finally:
        view.release()


def populate_ahead(mm: mmap.mmap) -> None:
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(mm.madvise, MADV_POPULATE_READ, 0, min(CHUNK, len(mm)))

        def before(a: int) -> None:
            nonlocal pending
            pending.result()
            if a + CHUNK < len(mm):
                pending = pool.submit(mm.madvise, MADV_POPULATE_READ, a + CHUNK, min(CHUNK, len(mm) - a - CHUNK))
        hash_all(mm, before)


def advised(*advice: int) -> Callable[[mmap.mmap], None]:
    """Hash the whole mapping after these madvise calls over all of it."""
    def read(mm: mmap.mmap) -> None:
        for a in advice:
            mm.madvise(a)
        hash_all(mm)
    return read


MODES: dict[str, Callable[[mmap.mmap], None]] = {
    "SEQUENTIAL (in use)": advised(mmap.MADV_SEQUENTIAL),
    "WILLNEED": advised(mmap.MADV_WILLNEED),
    "SEQUENTIAL + WILLNEED": advised(mmap.MADV_SEQUENTIAL, mmap.MADV_WILLNEED),
    "POPULATE_READ": advised(MADV_POPULATE_READ),
    "POPULATE_READ ahead": populate_ahead,
}


def cold_read(path: str, how: Callable[[mmap.mmap], None]) -> float:
    drop_caches()
    fd = os.open(path, os.O_RDONLY)
    try:
        mm = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
    finally:
        os.close(fd)
    start = time.perf_counter()
    how(mm)
    took = time.perf_counter() - start
    mm.close()
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    size = int(args.gib * (1 << 30)) // CHUNK * CHUNK
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        path = os.path.join(directory, "data.bin")
        with open(path, "wb") as f:
            for _ in range(size // CHUNK):
                f.write(os.urandom(CHUNK))
            os.fsync(f.fileno())
        times: dict[str, list[float]] = {name: [] for name in MODES}
        for _ in range(args.runs):
            for name, how in MODES.items():
                times[name].append(cold_read(path, how))
    for name, got in times.items():
        best = statistics.median(got)
        print(f"{name:22} cold {best:.3f} s ({size / best / 1e9:.2f} GB/s)  runs: {', '.join(f'{t:.3f}' for t in got)}")


if __name__ == "__main__":
    main()
