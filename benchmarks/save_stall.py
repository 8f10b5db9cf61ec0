"""How long training stops per save, and how much slower it runs around saves.

Run: .venv/bin/python benchmarks/save_stall.py [--gib 1.0] [--minutes 5] [--every 30] [--saves 3]
                                              [--write-mb-per-s 100] [--paced-minutes 5] [--floor-minutes 5]

One process trains an MLP whose parameters plus Adam state make about ``--gib`` GiB, and
saves while it trains, method after method, side by side in one run:

* stall per save: how long the training loop is stopped by one save call (median of
  ``--saves`` saves) for torchresume sync, torchresume async, DCP ``dcp.save``, DCP
  ``async_save`` (with a reused ``DefaultStager``; on CPU its pinned-memory option is
  ignored by PyTorch, since pinning needs CUDA, so it stages into plain cached host
  memory) and ``torch.save`` + fsync;
* training steps while a background write runs vs steps without one (ratio);
* first-touch vs warm copy: staging into fresh memory vs into the reused buffers;
* writer CPU: the CPU seconds one write of the state costs, buffered vs O_DIRECT
  (storage/direct.py): what a background write takes from training;
* overhead: a ``--minutes`` run with a torchresume async save every ``--every`` seconds;
  overhead = (stalls + extra step time during background writes) / wall time, where the
  extra is measured against the same run's steps with no write running;
* the same overhead run with the async writes paced (``--write-mb-per-s``,
  storage/pacing.py: the write spread over more steps, ``--paced-minutes``);
* steal: the CPU time the hypervisor took from this VM while writes ran (the steal
  column of /proc/stat, all CPUs), per save and over each overhead run;
* the floor under that overhead: a ``--floor-minutes`` run in which a plain thread writes
  the same number of bytes, prepared once, with O_DIRECT + fsync every ``--every`` seconds
  (no snapshot, no hashing, no format). In a VM the host's disk emulation runs on the
  VM's own CPU allowance, invisible to the guest, so writing costs training time whatever
  the writer's priority; overhead minus floor is what torchresume itself adds.
"""

from __future__ import annotations

import argparse
import mmap
import os
import shutil
import statistics
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

from torchresume import CheckpointManager, save_checkpoint
from torchresume.staging import StagingBuffers

LAYERS = 8


class Trainer:
    """An MLP of LAYERS square layers whose weights + Adam moments make ``gib`` GiB."""

    def __init__(self, gib: float) -> None:
        width = int(((gib * (1 << 30)) / (3 * 4 * LAYERS)) ** 0.5)
        torch.manual_seed(0)
        self.model = nn.Sequential(*[nn.Linear(width, width) for _ in range(LAYERS)])
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.x = torch.randn(8, width)
        self.step()  # Adam's moments exist from here on

    @property
    def nbytes(self) -> int:
        params = sum(p.numel() * p.element_size() for p in self.model.parameters())
        return 3 * params

    def step(self) -> float:
        t0 = time.perf_counter()
        loss = self.model(self.x).pow(2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return time.perf_counter() - t0

    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optim": self.opt.state_dict()}


@dataclass
class Result:
    stalls: list[float] = field(default_factory=list)
    clean: list[float] = field(default_factory=list)  # step times with no write running
    during: list[float] = field(default_factory=list)  # step times while a write runs
    steal: list[float] = field(default_factory=list)  # hypervisor steal per save (CPU seconds)

    @property
    def stall(self) -> float:
        return statistics.median(self.stalls[1:] if len(self.stalls) > 1 else self.stalls)

    @property
    def slowdown(self) -> float | None:
        if not self.during or not self.clean:
            return None
        return statistics.median(self.during) / statistics.median(self.clean)


def steal_seconds() -> float:
    """CPU seconds the hypervisor has taken from this VM since boot (all CPUs; 0 off Linux)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return 0.0
    return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0


def fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Method:
    """One way to save: ``save(i)`` returns a done() probe for its background part, or None."""

    name = ""

    def __init__(self, trainer: Trainer, workdir: str) -> None:
        self.trainer, self.dir = trainer, os.path.join(workdir, self.name.replace(" ", "_"))
        os.makedirs(self.dir, exist_ok=True)

    def save(self, i: int) -> Callable[[], bool] | None:
        raise NotImplementedError

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class TorchResume(Method):
    def __init__(self, trainer: Trainer, workdir: str, async_save: bool, mb_per_s: float | None = None) -> None:
        self.name = "torchresume sync" if not async_save else (
            "torchresume async" if mb_per_s is None else f"tr async {mb_per_s:g} MB/s")
        super().__init__(trainer, workdir)
        self.m = CheckpointManager(self.dir, model=trainer.model, optimizer=trainer.opt, keep=1,
                                   async_save=async_save, write_mb_per_s=mb_per_s)

    def save(self, i: int) -> Callable[[], bool] | None:
        self.m.save(1, i)
        return None if self.m.saving is None else (lambda: self.m.saving is None)

    def close(self) -> None:
        self.m.close()
        super().close()


class DcpSave(Method):
    name = "dcp.save"

    def save(self, i: int) -> Callable[[], bool] | None:
        dcp.save(self.trainer.state(), checkpoint_id=self.dir)  # the same files each time
        return None


class DcpAsync(Method):
    name = "dcp.async_save"

    def __init__(self, trainer: Trainer, workdir: str) -> None:
        super().__init__(trainer, workdir)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "pinning needs CUDA": said in the module docstring
            self.stager = DefaultStager(StagingOptions(use_pinned_memory=True, use_shared_memory=False,
                                                       use_async_staging=False,
                                                       use_non_blocking_copy=False))
        self.future: Any = None

    def save(self, i: int) -> Callable[[], bool] | None:
        if self.future is not None:
            self.future.result()  # at most one in flight, as torchresume's wait policy
        self.future = dcp.async_save(self.trainer.state(), checkpoint_id=self.dir, async_stager=self.stager)
        return self.future.done

    def close(self) -> None:
        if self.future is not None:
            self.future.result()
        self.stager.close()
        super().close()


class RawDirectWrite(Method):
    """The I/O alone: the state's bytes (prepared once) written by a plain thread with O_DIRECT + fsync.

    No snapshot, no hashing, no format: what moving that many bytes to this disk costs a
    training run that goes on meanwhile. The floor under any background save's overhead.
    """

    name = "raw O_DIRECT write"

    def __init__(self, trainer: Trainer, workdir: str) -> None:
        super().__init__(trainer, workdir)
        self.size = -(-trainer.nbytes // 4096) * 4096
        self.buf = mmap.mmap(-1, self.size)
        torch.frombuffer(self.buf, dtype=torch.uint8).fill_(1)  # every page touched once, here
        self.thread: threading.Thread | None = None

    def save(self, i: int) -> Callable[[], bool] | None:
        if self.thread is not None:
            self.thread.join()
        self.thread = threading.Thread(target=self._write, args=(os.path.join(self.dir, "raw.bin"),))
        self.thread.start()
        return lambda: self.thread is None or not self.thread.is_alive()

    def _write(self, path: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT)
        try:
            view = memoryview(self.buf)
            for a in range(0, self.size, 64 << 20):
                os.write(fd, view[a:a + (64 << 20)])
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        if self.thread is not None:
            self.thread.join()
        super().close()


class TorchSave(Method):
    name = "torch.save+fsync"

    def save(self, i: int) -> Callable[[], bool] | None:
        path = os.path.join(self.dir, "state.pt")
        torch.save(self.trainer.state(), path)
        fsync_file(path)
        return None


def run_method(method: Method, saves: int, gap_steps: int) -> Result:
    """``saves`` saves, ``gap_steps`` clean steps apart; steps run while a background write does."""
    r = Result()
    t = method.trainer
    for i in range(1, saves + 1):
        r.clean += [t.step() for _ in range(gap_steps)]
        t0, s0 = time.perf_counter(), steal_seconds()
        done = method.save(i)
        r.stalls.append(time.perf_counter() - t0)
        while done is not None and not done():
            step = t.step()
            if not done():
                r.during.append(step)  # the write ran for the whole step
        r.steal.append(steal_seconds() - s0)
    method.close()
    return r


def copy_costs(trainer: Trainer) -> tuple[float, float]:
    """Seconds to copy the state into freshly allocated memory, and into reused staging buffers."""
    state = trainer.state()
    buffers = StagingBuffers()
    buffers.stage(state)  # allocate + first touch once
    t0 = time.perf_counter()
    fresh = StagingBuffers().stage(state)
    first = time.perf_counter() - t0
    del fresh
    t0 = time.perf_counter()
    buffers.stage(state)
    return first, time.perf_counter() - t0


def writer_cpu(trainer: Trainer, workdir: str) -> dict[str, tuple[float, float]]:
    """CPU seconds and wall seconds of writing the staged state once, buffered and with O_DIRECT.

    The CPU is what a background write takes from training; it is measured in this thread
    (``time.thread_time``), which runs the whole write, fsync included.
    """
    import torchresume.storage.local as local
    snapshot = StagingBuffers().stage(trainer.state())
    saved, out = local.DIRECT_MIN_BYTES, {}
    try:
        for name, threshold in (("buffered", 1 << 62), ("O_DIRECT", 0)):
            local.DIRECT_MIN_BYTES = threshold
            path = os.path.join(workdir, f"cpu_{name}.ckpt")
            cpu, wall = time.thread_time(), time.perf_counter()
            save_checkpoint(snapshot, path)
            out[name] = (time.thread_time() - cpu, time.perf_counter() - wall)
            os.unlink(path)
    finally:
        local.DIRECT_MIN_BYTES = saved
    return out


def overhead_run(method: Method, minutes: float, every: float) -> tuple[float, int, Result]:
    """Train ``minutes`` with ``method`` saving every ``every`` s: (overhead fraction, saves, timings).

    ``timings.steal`` holds one number: the hypervisor's steal over the whole run.
    """
    trainer = method.trainer
    r = Result()
    start, steal0 = time.perf_counter(), steal_seconds()
    next_save, saves, done = start + every, 0, None
    while time.perf_counter() - start < minutes * 60:
        if time.perf_counter() >= next_save:
            saves += 1
            t0 = time.perf_counter()
            done = method.save(saves)
            r.stalls.append(time.perf_counter() - t0)
            next_save += every
        step = trainer.step()
        writing = done is not None and not done()
        (r.during if writing else r.clean).append(step)
        if not writing:
            done = None
    method.close()
    wall = time.perf_counter() - start
    r.steal.append(steal_seconds() - steal0)
    base = statistics.mean(r.clean)
    extra = sum(r.stalls) + sum(s - base for s in r.during)
    return extra / wall, saves, r


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gib", type=float, default=1.0, help="state size: weights + Adam moments (GiB)")
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the overhead run")
    parser.add_argument("--every", type=float, default=30.0, help="seconds between saves in the overhead run")
    parser.add_argument("--floor-minutes", type=float, default=5.0,
                        help="length of the raw-write run (the I/O alone) measured after it; 0: skip")
    parser.add_argument("--write-mb-per-s", type=float, default=100.0,
                        help="the paced async method's write rate (MB/s; CheckpointManager(write_mb_per_s=))")
    parser.add_argument("--paced-minutes", type=float, default=5.0,
                        help="length of the overhead run with paced async saves; 0: skip")
    parser.add_argument("--saves", type=int, default=5, help="saves per method for the stall table")
    parser.add_argument("--gap-steps", type=int, default=2, help="clean steps between saves")
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    parser.add_argument("--record", action="store_true",
                        help="store the stall table in --results (benchmarks/results.json)")
    parser.add_argument("--results", default=None, help="the results file (default: benchmarks/results.json)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    measure(parser.parse_args())


def measure(args: argparse.Namespace) -> list[Check]:
    """Everything above, in a temporary directory, under a one-rank gloo group (DCP needs one)."""
    warnings.filterwarnings("ignore", message="Detected an existing checkpoint")  # DCP rewrites its dir
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    dist.init_process_group("gloo", rank=0, world_size=1)
    workdir = tempfile.mkdtemp(prefix="save_stall_", dir=args.dir)
    try:
        return report(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        dist.destroy_process_group()


Check = tuple[str, bool, str]  # (target, met?, what was measured)


def report(args: argparse.Namespace, workdir: str) -> list[Check]:
    """Run every measurement, print the tables, and return the targets with their outcomes."""
    trainer = Trainer(args.gib)
    print(f"state {trainer.nbytes / (1 << 30):.2f} GiB (MLP {LAYERS} layers + Adam), {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}, writing to {workdir}", flush=True)
    first, warm = copy_costs(trainer)
    print(f"copy of the state: fresh memory {first:.3f} s, reused buffers {warm:.3f} s "
          f"(first touch {first / warm:.1f}x slower)", flush=True)
    for name, (cpu, wall) in writer_cpu(trainer, workdir).items():
        print(f"writer CPU, one {name} write of the state: {cpu:.3f} s CPU ({wall:.2f} s wall)", flush=True)
    methods: list[Callable[[], Method]] = [
        lambda: TorchResume(trainer, workdir, async_save=False),
        lambda: TorchResume(trainer, workdir, async_save=True),
        lambda: TorchResume(trainer, workdir, async_save=True, mb_per_s=args.write_mb_per_s),
        lambda: DcpSave(trainer, workdir),
        lambda: DcpAsync(trainer, workdir),
        lambda: TorchSave(trainer, workdir),
    ]
    results: dict[str, Result] = {}
    for make in methods:
        method = make()
        results[method.name] = run_method(method, args.saves, args.gap_steps)
        print(f"  {method.name}: stalls {', '.join(f'{s:.3f}' for s in results[method.name].stalls)} s",
              flush=True)
    sync = results["torchresume sync"].stall
    gib = trainer.nbytes / (1 << 30)
    print(f"\n{'method':22} {'stall/save s':>12} {'vs tr sync':>10} {'step during write':>18} {'steal/GiB s':>12}")
    for name, r in results.items():
        slow = f"{r.slowdown:.2f}x" if r.slowdown is not None else "-"
        print(f"{name:22} {r.stall:12.3f} {r.stall / sync:9.3f}x {slow:>18} "
              f"{statistics.median(r.steal) / gib:12.2f}")
    if args.record:
        import results as results_file  # benchmarks/results.py
        rows = [{"method": name, "stall_s": round(r.stall, 4), "vs_sync": round(r.stall / sync, 4),
                 "steps_during_write": round(r.slowdown, 3) if r.slowdown is not None else None,
                 "steal_per_gib_s": round(statistics.median(r.steal) / gib, 3)} for name, r in results.items()]
        results_file.record("save_stall", rows,
                            path=Path(args.results) if args.results else results_file.RESULTS,
                            units={"stall_s": "s", "vs_sync": "x", "steps_during_write": "x",
                                   "steal_per_gib_s": "s"},
                            notes=f"{gib:.2f} GiB state (MLP + Adam) trained while it saves; {args.saves} "
                                  "saves per method, medians without the first")
    runs = [(f"a torchresume async save every {args.every:g} s", args.minutes,
             lambda: TorchResume(trainer, workdir, async_save=True)),
            (f"the same, written at {args.write_mb_per_s:g} MB/s", args.paced_minutes,
             lambda: TorchResume(trainer, workdir, async_save=True, mb_per_s=args.write_mb_per_s)),
            ("floor: the same bytes written raw (O_DIRECT + fsync, no snapshot or hashing) by a plain thread",
             args.floor_minutes, lambda: RawDirectWrite(trainer, workdir))]
    overheads: list[float] = []
    cpus = os.cpu_count() or 1
    print()
    for what, minutes, make in runs:
        if minutes <= 0:
            overheads.append(float("nan"))
            continue
        overhead, saves, r = overhead_run(make(), minutes, args.every)
        overheads.append(overhead)
        print(f"overhead, {minutes:g} min, {what} ({saves} saves): {overhead * 100:.2f}% of the run; steps "
              f"during writes {r.slowdown or 0:.2f}x clean ({len(r.during)} of {len(r.during) + len(r.clean)} "
              f"steps); hypervisor steal {r.steal[0]:.1f} CPU-s ({r.steal[0] / cpus / (minutes * 60) * 100:.2f}% of "
              f"the run's CPU time, {r.steal[0] / max(saves, 1):.2f} s per save)", flush=True)
    if overheads[2] == overheads[2]:  # not NaN: the floor ran
        print(f"=> torchresume's own share of the overhead: {(overheads[0] - overheads[2]) * 100:.2f}% of the run")
    tr_async, dcp_async = results["torchresume async"], results["dcp.async_save"]
    paced = results[f"tr async {args.write_mb_per_s:g} MB/s"]
    print("\ntargets:")
    checks: list[Check] = [("async stall <= 0.05x torchresume sync", tr_async.stall <= 0.05 * sync,
               f"{tr_async.stall / sync:.3f}x"),
              ("async stall <= DCP async_save stall", tr_async.stall <= dcp_async.stall,
               f"{tr_async.stall:.3f} vs {dcp_async.stall:.3f} s"),
              ("steps during a background write <= 1.10x", *_at_most(tr_async.slowdown, 1.10)),
              (f"the same, paced at {args.write_mb_per_s:g} MB/s", *_at_most(paced.slowdown, 1.10)),
              (f"overhead of a save every {args.every:g} s < 1%", overheads[0] < 0.01, f"{overheads[0] * 100:.2f}%"),
              ("the same, paced", overheads[1] < 0.01, f"{overheads[1] * 100:.2f}%")]
    print_checks(checks)
    return checks


def _at_most(slowdown: float | None, bound: float) -> tuple[bool, str]:
    """A slowdown target: not met when no step ran during a write (nothing was measured)."""
    if slowdown is None:
        return False, "no step ran during a write (save more, or with more steps between saves)"
    return slowdown <= bound, f"{slowdown:.2f}x"


def print_checks(checks: list[Check]) -> None:
    for what, ok, got in checks:
        print(f"  {'met ' if ok else 'MISS'} {what}: {got}")


if __name__ == "__main__":
    main()
