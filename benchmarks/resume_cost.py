"""The cost of resuming: process start -> first step, resumed run minus fresh run (LeNet5/MNIST).

Run: .venv/bin/python benchmarks/resume_cost.py [--repeats 3]

A fresh run and a run resuming mid-epoch from a checkpoint are started as
real processes; the time to their first recorded training step (summary.jsonl)
is measured from Popen. Medians are reported side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def _first_step_time(cmd: list[str], summary: str, skip: int) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        if os.path.exists(summary):
            with open(summary) as f:
                lines = f.read().splitlines()
            if len(lines) > skip:
                try:
                    json.loads(lines[skip])
                    elapsed = time.perf_counter() - start
                    break
                except json.JSONDecodeError:
                    pass
        time.sleep(0.002)
    proc.kill()
    proc.wait()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    base = [sys.executable, "-m", "torchresume", "train", "--epochs", "2", "--save-steps", "100"]
    fresh_t, resumed_t = [], []
    for _ in range(args.repeats):
        for kind in ("fresh", "resumed"):
            work = tempfile.mkdtemp(prefix=".resume-", dir=".")
            cmd = [*base, "--train-url", work]
            summary = os.path.join(work, "summary.jsonl")
            skip = 0
            if kind == "resumed":  # make a checkpoint at step 100, then resume from it
                _run_to_checkpoint(cmd, work)
                with open(summary) as f:
                    skip = len(f.read().splitlines())
            (resumed_t if kind == "resumed" else fresh_t).append(_first_step_time(cmd, summary, skip))
            shutil.rmtree(work, ignore_errors=True)
    fresh, resumed = statistics.median(fresh_t), statistics.median(resumed_t)
    print(f"process start -> first step: fresh {fresh:.2f} s, resumed {resumed:.2f} s (medians of "
          f"{args.repeats}); cost of resuming = {resumed - fresh:+.2f} s")


def _run_to_checkpoint(cmd: list[str], work: str) -> None:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not any(n.endswith(".ckpt") for n in os.listdir(work)):
        time.sleep(0.01)
    time.sleep(0.2)
    proc.kill()
    proc.wait()


if __name__ == "__main__":
    main()
