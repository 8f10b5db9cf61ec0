"""Does pacing a background write change what it costs training? Raw bytes, no format.

Run: .venv/bin/python benchmarks/write_pacing.py [--gib 1] [--rounds 2]

Trains the MLP of benchmarks/save_stall.py (weights + Adam moments of ``--gib`` GiB) while a
plain thread writes that many prepared bytes with O_DIRECT + fsync, in turn: 64 MiB and 8 MiB
requests as fast as they go, 8 MiB requests paced to 200 and 100 MB/s, 2 MiB requests at
50 MB/s. For each: the training seconds lost to the write (sum of step times during it minus as
many clean steps), the write's wall time, the hypervisor's steal meanwhile (the steal column of
/proc/stat, all CPUs) and the median step slowdown. Medians over ``--rounds`` rounds, modes
interleaved. What it showed (docs/benchmarks.md, "Async stall"): the steal is about the same at every size
and rate; pacing only spreads it over more steps.
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import sys
import tempfile
import threading
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from save_stall import Trainer, steal_seconds

MIB = 1 << 20
MODES = [("64 MiB, unpaced", 64 * MIB, 0.0), ("8 MiB, unpaced", 8 * MIB, 0.0), ("8 MiB, 200 MB/s", 8 * MIB, 200e6),
         ("8 MiB, 100 MB/s", 8 * MIB, 100e6), ("2 MiB, 50 MB/s", 2 * MIB, 50e6)]


def write(buf: mmap.mmap, path: str, chunk: int, rate: float) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT)
    try:
        view, start, sent = memoryview(buf), time.perf_counter(), 0
        for a in range(0, len(buf), chunk):
            sent += os.write(fd, view[a:a + chunk])
            ahead = sent / rate - (time.perf_counter() - start) if rate else 0.0
            if ahead > 0:
                time.sleep(ahead)
        os.fsync(fd)
    finally:
        os.close(fd)


def one(trainer: Trainer, buf: mmap.mmap, path: str, chunk: int, rate: float) -> tuple[float, float, float, float]:
    """(training seconds lost, write seconds, steal CPU-seconds, median step slowdown) of one write."""
    base = statistics.median(trainer.step() for _ in range(4))
    steal0, start = steal_seconds(), time.perf_counter()
    thread = threading.Thread(target=write, args=(buf, path, chunk, rate))
    thread.start()
    during = []
    while thread.is_alive():
        during.append(trainer.step())
    thread.join()
    took, steal = time.perf_counter() - start, steal_seconds() - steal0
    return sum(during) - base * len(during), took, steal, statistics.median(during) / base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    args = parser.parse_args()
    trainer = Trainer(args.gib)
    buf = mmap.mmap(-1, -(-trainer.nbytes // 4096) * 4096)
    torch.frombuffer(buf, dtype=torch.uint8).fill_(1)  # every page touched once, here
    print(f"{len(buf) / (1 << 30):.2f} GiB per write, load average {os.getloadavg()[0]:.2f}", flush=True)
    results: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name, _, _ in MODES}
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        path = os.path.join(directory, "raw.bin")
        for r in range(args.rounds):
            for name, chunk, rate in MODES:
                results[name].append(one(trainer, buf, path, chunk, rate))
                lost, took, steal, slow = results[name][-1]
                print(f"round {r + 1} {name:16} lost {lost:5.2f} s  write {took:5.2f} s  steal {steal:4.2f} s  "
                      f"steps {slow:.2f}x", flush=True)
    print(f"\n{'requests':16} {'training s lost':>15} {'write s':>8} {'steal CPU-s':>11} {'step slowdown':>13}")
    for name, rows in results.items():
        lost, took, steal, slow = (statistics.median(col) for col in zip(*rows, strict=True))
        print(f"{name:16} {lost:15.2f} {took:8.2f} {steal:11.2f} {slow:12.2f}x")


if __name__ == "__main__":
    main()
