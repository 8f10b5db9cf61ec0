"""What one async save costs the training loop, ours against DCP's: issue 26's baseline.

Run: .venv/bin/python benchmarks/overlap_staging.py [--sizes 0.25 1.0] [--rounds 5] [--steps 3]
                                                   [--run-steps 40] [--every 10]

For each state size, one process trains save_stall.py's MLP (weights + Adam moments = the size)
and, round after round (the order of the methods rotated every round), saves with:

* ``torchresume async``: ``CheckpointManager(async_save=True).save()`` copies the state into reused
  staging buffers, then returns; the write runs in the background;
* ``torchresume overlap``: the same with ``overlap=True``: the call returns before the weights and
  moments are copied; the copy runs beside the next forward and backward, and the next
  ``optimizer.step`` waits for what is left (``wait_staged``, called explicitly to time it);
* ``DCP async_save``: ``dcp.async_save()`` as it comes (it stages a copy before returning);
* ``DCP DefaultStager``: ``dcp.async_save(async_stager=DefaultStager(StagingOptions(
  use_async_staging=True)))``, the stager reused: the call returns at once and the copy runs in the
  background; the next ``optimizer.step`` must first wait for ``staging_completion`` (on CPU without
  pinned memory or non-blocking copies, which need an accelerator; shared memory off: one process).

Each method saves once first (buffers allocated and touched), outside the figures. Per save: the
stall (the save call), the wait before the next ``optimizer.step`` (for a staging still running), and
the extra time of the next ``--steps`` steps over clean steps (steps far from any save); lost =
stall + wait + extra: what training loses to one save. Then steps per second over ``--run-steps``
steps with a save every ``--every`` steps, each method and no saves, side by side. Prints the
medians over the rounds and each figure's ratio to DCP DefaultStager's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from save_stall import Trainer  # type: ignore[import-not-found]  # run as a script from benchmarks/
from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

from torchresume import CheckpointManager

Finish = Callable[[], None]


class Saver:
    """One way to save: ``save(i)`` returns (wait for staging before the next optimizer.step, finish)."""

    name = ""

    def __init__(self, trainer: Trainer, root: str) -> None:
        self.trainer, self.dir = trainer, os.path.join(root, self.name.replace(" ", "_"))
        os.makedirs(self.dir, exist_ok=True)

    def save(self, i: int) -> tuple[Finish, Finish]:
        raise NotImplementedError

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class Ours(Saver):
    name = "torchresume async"

    def __init__(self, trainer: Trainer, root: str) -> None:
        super().__init__(trainer, root)
        self.mgr = CheckpointManager(self.dir, model=trainer.model, optimizer=trainer.opt, async_save=True, keep=1)

    def save(self, i: int) -> tuple[Finish, Finish]:
        self.mgr.save(1, i)
        return (lambda: None), self.mgr.wait

    def close(self) -> None:
        self.mgr.close()
        super().close()


class OursOverlapped(Ours):
    name = "torchresume overlap"

    def __init__(self, trainer: Trainer, root: str) -> None:
        Saver.__init__(self, trainer, root)
        self.mgr = CheckpointManager(self.dir, model=trainer.model, optimizer=trainer.opt, async_save=True, keep=1,
                                     overlap=True)

    def save(self, i: int) -> tuple[Finish, Finish]:
        self.mgr.save(1, i)  # returns before the weights and moments are copied
        return self.mgr.wait_staged, self.mgr.wait  # (optimizer.step would wait by itself: made visible)


class DcpDefault(Saver):
    name = "DCP async_save"

    def save(self, i: int) -> tuple[Finish, Finish]:
        future: Any = dcp.async_save(self.trainer.state(), checkpoint_id=os.path.join(self.dir, str(i)), no_dist=True)
        return (lambda: None), lambda: future.result()


class DcpStager(Saver):
    name = "DCP DefaultStager"

    def __init__(self, trainer: Trainer, root: str) -> None:
        super().__init__(trainer, root)
        cuda = torch.cuda.is_available()  # pinned memory and non-blocking copies need an accelerator
        self.stager = DefaultStager(StagingOptions(use_pinned_memory=cuda, use_shared_memory=False,
                                                   use_async_staging=True, use_non_blocking_copy=cuda))

    def save(self, i: int) -> tuple[Finish, Finish]:
        response: Any = dcp.async_save(self.trainer.state(), checkpoint_id=os.path.join(self.dir, str(i)),
                                       async_stager=self.stager, no_dist=True)
        return (lambda: response.staging_completion.result()), lambda: response.upload_completion.result()

    def close(self) -> None:
        self.stager.close()
        super().close()


SAVERS = (Ours, OursOverlapped, DcpDefault, DcpStager)


def step(trainer: Trainer, before_update: Finish | None = None) -> tuple[float, float]:
    """One training step; (its seconds without the wait, the wait before optimizer.step)."""
    t0 = time.perf_counter()
    loss = trainer.model(trainer.x).pow(2).mean()
    trainer.opt.zero_grad()
    loss.backward()
    w0 = time.perf_counter()
    if before_update is not None:
        before_update()  # the weights and moments change next: the staged copy must be complete
    wait = time.perf_counter() - w0
    trainer.opt.step()
    return time.perf_counter() - t0 - wait, wait


def one_save(trainer: Trainer, saver: Saver, i: int, steps: int, clean: float) -> dict[str, float]:
    t0 = time.perf_counter()
    staged, finish = saver.save(i)
    stall = time.perf_counter() - t0
    first, wait = step(trainer, staged)
    following = [step(trainer)[0] for _ in range(steps - 1)]
    extra = first + sum(following) - steps * clean
    finish()  # the write, outside the timings
    return {"stall": stall, "wait": wait, "extra": extra, "lost": stall + wait + extra}


def run_rate(trainer: Trainer, saver: Saver | None, steps: int, every: int, first: int) -> float:
    """Steps per second over ``steps`` steps with a save every ``every`` (None: no saves); the saves
    are numbered from ``first`` (each checkpoint a new one)."""
    pending: list[Finish] = []
    staged: Finish | None = None
    start = time.perf_counter()
    for i in range(1, steps + 1):
        step(trainer, staged)
        staged = None
        if saver is not None and i % every == 0:
            staged, finish = saver.save(first + i)
            pending.append(finish)
    elapsed = time.perf_counter() - start
    for finish in pending:
        finish()
    return steps / elapsed


def measure(gib: float, rounds: int, steps: int, run_steps: int, every: int, root: str) -> dict[str, dict[str, float]]:
    trainer = Trainer(gib)
    savers = [cls(trainer, root) for cls in SAVERS]
    figures: dict[str, dict[str, list[float]]] = {s.name: {} for s in savers}
    try:
        for saver in savers:  # warm-up: buffers allocated and first-touched once, outside the figures
            saver.save(0)[1]()
        for r in range(rounds):
            order = savers[r % len(savers):] + savers[:r % len(savers)]
            for saver in order:
                clean = statistics.median(step(trainer)[0] for _ in range(5))
                for key, value in one_save(trainer, saver, r + 1, steps, clean).items():
                    figures[saver.name].setdefault(key, []).append(value)
        rates: dict[str, list[float]] = {"no saves": []}
        for r in range(max(1, rounds // 2)):
            rates["no saves"].append(run_rate(trainer, None, run_steps, every, 0))
            for saver in savers if r % 2 == 0 else savers[::-1]:
                first = 1000 * (r + 1)  # past the rounds' numbers
                rates.setdefault(saver.name, []).append(run_rate(trainer, saver, run_steps, every, first))
    finally:
        for saver in savers:
            saver.close()
    out = {name: {k: statistics.median(v) for k, v in f.items()} for name, f in figures.items()}
    for name, values in rates.items():
        out.setdefault(name, {})["steps/s"] = statistics.median(values)
    out["state"] = {"GiB": trainer.nbytes / (1 << 30)}
    return out


def report(gib: float, res: dict[str, dict[str, float]]) -> str:
    ref = res["DCP DefaultStager"]
    lines = [f"state {res['state']['GiB']:.2f} GiB (asked {gib:g}); ms, medians; (x) = ratio to DCP DefaultStager",
             f"{'method':<20} {'stall':>14} {'wait':>14} {'extra':>14} {'lost':>14} {'steps/s':>9}"]
    for name in [cls.name for cls in SAVERS]:
        r = res[name]
        cells = [f"{1000 * r[k]:7.1f} ({r[k] / ref[k]:4.1f})" if abs(ref[k]) > 1e-6 else f"{1000 * r[k]:7.1f}"
                 for k in ("stall", "wait", "extra", "lost")]
        lines.append(f"{name:<20} " + " ".join(f"{c:>14}" for c in cells) + f" {r['steps/s']:9.2f}")
    lines.append(f"{'no saves':<20} {'':>14} {'':>14} {'':>14} {'':>14} {res['no saves']['steps/s']:9.2f}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=float, nargs="+", default=[0.25, 1.0], help="state sizes in GiB")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="steps after a save counted as its extra time")
    p.add_argument("--run-steps", type=int, default=40)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--dir", default=None, help="where to write (default: the system temp dir)")
    args = p.parse_args()
    warnings.filterwarnings("ignore", message="torch.distributed is disabled")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs", flush=True)
    for gib in args.sizes:
        root = tempfile.mkdtemp(prefix="overlap-", dir=args.dir)
        try:
            print(report(gib, measure(gib, args.rounds, args.steps, args.run_steps, args.every, root)), flush=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
