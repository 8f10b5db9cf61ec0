"""Lightning: resume after SIGKILL, stock Lightning side by side with torchresume's plugin.

Run: .venv/bin/python benchmarks/lightning_resume.py [--epochs 5] [--kills 7] [--workers 0 2]

The workload is tests/integration/lightning_run.py (a Trainer.fit of a small MLP with dropout on a
shuffled ``DataLoader`` whose dataset draws noise, checkpointing every 2 steps, ``ckpt_path="last"``).
For each worker count and each way of checkpointing (``stock``: Lightning's own ``ModelCheckpoint``
and ``torch.save`` ``.ckpt``; ``torchresume``: ``TorchResumeCheckpoint`` and ``TorchResumeIO``) it
runs once uninterrupted, then SIGKILLs a second run ``--kills`` times (tests/fault/killing.py, the
same seed for both) and reruns the same command until it finishes. Prints how far the killed run's
final weights, optimizer state and RNG are from its own uninterrupted run's, how many steps trained
another batch, and whether Lightning warned that it resumed mid-epoch from a non-resumable loader.

Stock Lightning writes a checkpoint through fsspec's temporary in the system temp directory, so a kill
cannot be aimed at its write: its kills are all aimed between writes (they may still land in one).
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from tests.fault.killing import env, kill_once  # noqa: E402

import torchresume as tr  # noqa: E402

SCRIPT = str(ROOT / "tests" / "integration" / "lightning_run.py")
WARNING = "not resumable"  # Lightning's warning on a mid-epoch resume it cannot make exact
SEED = 21


@dataclass
class Outcome:
    """One killed run compared with its own uninterrupted run."""

    method: str
    workers: int
    landed: Counter[str]
    max_abs: float
    weights_equal: bool
    optimizer_equal: bool
    rng_equal: bool
    batches_differ: int
    steps: int
    warned: bool


def command(run: Path, workers: int, epochs: int, method: str) -> list[str]:
    return [sys.executable, SCRIPT, str(run), str(workers), str(epochs), *(["stock"] if method == "stock" else [])]


def finish(cmd: list[str]) -> str:
    """Run ``cmd`` to its end; its stderr."""
    done = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stderr


def kills(cmd: list[str], run: Path, n: int, aims: tuple[str, ...]) -> tuple[Counter[str], str]:
    """``n`` aimed kills, as tests/fault/killing.py's random_kills takes them (seed SEED); where
    they landed and every killed launch's stderr."""
    rng, landed, errs = random.Random(SEED), Counter[str](), []
    for i in range(n):
        where, child = kill_once(cmd, run, aims[i % len(aims)], rng, max_new_steps=4)
        landed[where] += 1
        errs.append(child.stderr)
        if where == "finished":
            break
    return landed, "".join(errs)


def tensors(run: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in tr.load_checkpoint(str(run / "final.ckpt")).items() if isinstance(v, torch.Tensor)}


def batches(run: Path) -> dict[int, str]:
    """The batch each step trained on, as the last run to train that step saw it."""
    return {int(s): d for s, d in (line.split() for line in (run / "batches").read_text().splitlines())}


def compare(method: str, workers: int, run: Path, ref: Path, landed: Counter[str], warned: bool) -> Outcome:
    got, want = tensors(run), tensors(ref)

    def equal(prefix: str) -> bool:
        return all(torch.equal(got[k], t) for k, t in want.items() if k.startswith(prefix))
    weights = [k for k in want if k.startswith("net.")]
    max_abs = max(float((got[k].double() - want[k].double()).abs().max()) for k in weights)
    mine, theirs = batches(run), batches(ref)
    differ = sum(mine.get(step) != digest for step, digest in theirs.items())
    return Outcome(method, workers, landed, max_abs, equal("net."), equal("optimizer."), equal("rng."),
                   differ, len(theirs), warned)


def measure(method: str, workers: int, epochs: int, n: int, scratch: Path) -> Outcome:
    ref, run = scratch / f"{method}-{workers}-ref", scratch / f"{method}-{workers}-killed"
    ref.mkdir()
    run.mkdir()
    finish(command(ref, workers, epochs, method))
    aims = ("mid-step",) if method == "stock" else ("mid-save", "mid-step")
    landed, errs = kills(command(run, workers, epochs, method), run, n, aims)
    errs += finish(command(run, workers, epochs, method))
    return compare(method, workers, run, ref, landed, WARNING in errs)


def table(outcomes: list[Outcome]) -> str:
    head = (f"{'method':<12}{'workers':>8}{'kills':>6}{'mid-save':>9}{'mid-step':>9}{'max |dw|':>11}"
            f"{'weights':>9}{'optim':>7}{'RNG':>5}{'batches differ':>16}  warned")
    lines = [head]
    for o in outcomes:
        kills_made = o.landed["mid-save"] + o.landed["mid-step"]
        lines.append(f"{o.method:<12}{o.workers:>8}{kills_made:>6}{o.landed['mid-save']:>9}{o.landed['mid-step']:>9}"
                     f"{o.max_abs:>11.3g}{'equal' if o.weights_equal else 'differ':>9}"
                     f"{'eq' if o.optimizer_equal else 'diff':>7}{'eq' if o.rng_equal else 'diff':>5}"
                     f"{f'{o.batches_differ}/{o.steps}':>16}  {'yes' if o.warned else 'no'}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=5, help="epochs of 10 steps")
    p.add_argument("--kills", type=int, default=7, help="kills per killed run")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader num_workers to run")
    p.add_argument("--dir", default=None, help="scratch directory (default: a temporary one)")
    args = p.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="lightning-resume-", dir=args.dir))
    started = time.monotonic()
    try:
        outcomes = [measure(method, workers, args.epochs, args.kills, scratch)
                    for workers in args.workers for method in ("stock", "torchresume")]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"Lightning {_lightning_version()}, {args.epochs} epochs of 10 steps, {args.kills} kills per run, "
          f"seed {SEED}; each killed run against its own uninterrupted run ({time.monotonic() - started:.0f} s)")
    print(table(outcomes))


def _lightning_version() -> str:
    import lightning
    return lightning.__version__


if __name__ == "__main__":
    main()
