"""Does a background checkpoint writer hold the interpreter? Thread writer vs writer process.

Two measurements, side by side in one run:

1. Per call: while a thread runs one call of the write path (xxh3 of a large buffer,
   os.write of a memoryview, a tensor copy, a whole encode + write), the main thread runs
   a pure-Python loop and records the longest gap between two of its iterations. A call
   that holds the GIL stops the loop for the call's whole duration (gap ~ call time); one
   that releases it leaves gaps of a scheduler slice (ms), whatever the CPU contention.
   The loop's rate vs idle is printed too, but on a loaded machine it mostly shows CPU
   contention, not the GIL.
2. A training loop (a small MLP: many short ops, so the interpreter matters) times its steps
   while a background write of ``--mib`` MiB runs (a) in a Python thread and (b) in a writer
   process that reads the snapshot from shared memory, against steps with no write.

Run: .venv/bin/python benchmarks/writer_gil.py [--mib 512] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.multiprocessing as mp
import xxhash

from torchresume.files import encode_state, write_encoded


def count_while(fn: Callable[[], object]) -> tuple[float, float, float]:
    """(loop iterations per second, longest gap between iterations, fn's seconds) with fn in a thread."""
    done = threading.Event()
    took: list[float] = []

    def run() -> None:
        t0 = time.perf_counter()
        fn()
        took.append(time.perf_counter() - t0)
        done.set()
    n, gap = 0, 0.0
    worker = threading.Thread(target=run)
    start = last = time.perf_counter()
    worker.start()
    while not done.is_set():
        n += 1
        now = time.perf_counter()
        gap, last = max(gap, now - last), now
    elapsed = time.perf_counter() - start
    worker.join()
    return n / elapsed, gap, took[0]


def state_of(mib: int) -> dict[str, torch.Tensor]:
    return {f"t{i}": torch.randn(1 << 20) for i in range(mib // 4)}


def write_state(state: dict[str, torch.Tensor], path: str) -> None:
    write_encoded(encode_state("tensors", state), path, None)


def per_call(mib: int, directory: str) -> list[tuple[str, float, float, float]]:
    buf = torch.randn(mib << 18)  # mib MiB of float32
    view = memoryview(buf.numpy()).cast("B")
    dst = torch.empty_like(buf)
    state = state_of(mib)
    path = os.path.join(directory, "gil_probe.ckpt")

    def raw_write() -> None:
        fd = os.open(path + ".raw", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, view)
        finally:
            os.close(fd)
    calls: list[tuple[str, Callable[[], object]]] = [
        ("xxh3_64 of the buffer", lambda: xxhash.xxh3_64_hexdigest(view)),
        ("os.write of a memoryview", raw_write),
        ("tensor copy_ (warm)", lambda: dst.copy_(buf)),
        ("encode_state + write_encoded", lambda: write_state(state, path)),
    ]
    rows = []
    for name, fn in calls:
        fn()  # warm
        base, _, _ = count_while(lambda: time.sleep(0.3))
        rate, gap, took = count_while(fn)
        rows.append((name, rate / base, gap, took))
    for p in (path, path + ".raw"):
        if os.path.exists(p):
            os.unlink(p)
    return rows


def niced_write(state: dict[str, torch.Tensor], path: str) -> None:
    """write_state at a lower CPU priority (Linux: setpriority on a thread id is per thread)."""
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    write_state(state, path)


def _process_writer(tasks: Any, done: Any) -> None:
    while True:
        task = tasks.get()
        if task is None:
            return
        state, path = task
        write_state(state, path)
        done.put(path)


class Trainer:
    """A small MLP trained on random data: many short ops per step."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU())
                                           for _ in range(8)], torch.nn.Linear(256, 10))
        self.opt = torch.optim.Adam(self.model.parameters())
        self.x, self.y = torch.randn(64, 256), torch.randint(0, 10, (64,))

    def step(self) -> float:
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(self.model(self.x), self.y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return time.perf_counter() - t0


def steps_while(trainer: Trainer, running: Callable[[], bool]) -> list[float]:
    times = []
    while running():
        times.append(trainer.step())
    return times


def clean_steps(trainer: Trainer, n: int) -> list[float]:
    return [trainer.step() for _ in range(n)]


def training_slowdown(mib: int, directory: str, rounds: int) -> dict[str, float]:
    torch.set_num_threads(1)
    trainer = Trainer()
    clean_steps(trainer, 50)
    state = state_of(mib)
    shared = {k: v.clone().share_memory_() for k, v in state.items()}
    ctx = mp.get_context("spawn")
    tasks, done = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=_process_writer, args=(tasks, done), daemon=True)
    proc.start()
    path = os.path.join(directory, "gil_train.ckpt")
    tasks.put((shared, path))
    done.get()  # the writer process is up and warm
    out: dict[str, list[float]] = {"none": [], "thread": [], "niced thread": [], "process": []}
    for _ in range(rounds):
        out["none"] += clean_steps(trainer, 30)
        worker = threading.Thread(target=write_state, args=(state, path))
        worker.start()
        out["thread"] += steps_while(trainer, worker.is_alive)
        worker.join()
        out["none"] += clean_steps(trainer, 30)
        worker = threading.Thread(target=niced_write, args=(state, path))
        worker.start()
        out["niced thread"] += steps_while(trainer, worker.is_alive)
        worker.join()
        out["none"] += clean_steps(trainer, 30)
        tasks.put((shared, path))
        waiter = threading.Thread(target=done.get, daemon=True)
        waiter.start()
        out["process"] += steps_while(trainer, waiter.is_alive)
    tasks.put(None)
    proc.join(10)
    os.unlink(path)
    return {k: statistics.median(v) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=512, help="size of the state written (MiB)")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where to write")
    parser.add_argument("--rounds", type=int, default=3, help="background writes per writer kind")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; {args.mib} MiB state")
    print(f"\n{'call in a background thread':32} {'call s':>8} {'longest stop s':>15} {'loop rate':>10}")
    for name, ratio, gap, took in per_call(args.mib, args.dir):
        print(f"{name:32} {took:8.3f} {gap:15.3f} {ratio:9.2f}x")
    med = training_slowdown(args.mib, args.dir, args.rounds)
    print(f"\n{'training step (median)':32} {'ms':>8} {'vs none':>8}")
    for k in ("none", "thread", "niced thread", "process"):
        print(f"{'write in a ' + k if k != 'none' else 'no write':32} {med[k] * 1e3:8.2f} "
              f"{med[k] / med['none']:7.2f}x")


if __name__ == "__main__":
    main()
