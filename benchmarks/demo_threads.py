"""The main job on a busy machine: ``torchresume demo`` with its default threads vs --threads 1 and 2.

Run: .venv/bin/python benchmarks/demo_threads.py [--steps-per-epoch N] [--neighbours K]

Starts one CPU-bound neighbour process per core (``--neighbours``, default: the cores this
process may use), then runs ``torchresume demo`` three times in one run, alike but for the
threads: the default (what the command chooses), ``--threads 1`` and ``--threads 2``. It prints
each wall time, the ratio of each to the best of --threads 1 and --threads 2 (the target: the
default at most 2x that best), the thread count the default chose, and each run's accuracies
(which depend on the thread count: summary.json records it). The neighbours stop at the end.
Not a test: a timed figure means something only on the machine that measured it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _spin() -> None:
    while True:  # CPU-bound, as other users' jobs are
        pass


def _demo(flags: list[str], workdir: str, steps: int | None) -> dict[str, object]:
    cmd = [sys.executable, "-m", "torchresume", "demo", "--workdir", workdir, *flags]
    if steps:
        cmd += ["--steps-per-epoch", str(steps)]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    chosen = re.search(r"CPU threads: (\d+) \(([^)]*)\)", done.stdout + done.stderr)
    summary = json.loads(Path(workdir, "summary.json").read_text())
    return {"seconds": seconds, "threads": summary["threads"], "why": chosen.group(2) if chosen else "?",
            "acc": (summary["accuracy_after_first_training"], summary["accuracy_after_resuming"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps-per-epoch", type=int, default=None, help="shorten the demo (default: whole)")
    parser.add_argument("--neighbours", type=int, default=len(os.sched_getaffinity(0)),
                        help="CPU-bound neighbour processes (default: one per core)")
    args = parser.parse_args()
    neighbours = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.neighbours)]
    for p in neighbours:
        p.start()
    rows: dict[str, dict[str, object]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name, flags in (("default", []), ("--threads 1", ["--threads", "1"]),
                                ("--threads 2", ["--threads", "2"])):
                rows[name] = _demo(flags, os.path.join(tmp, name.strip("-").replace(" ", "")), args.steps_per_epoch)
                print(f"{name:<12} {rows[name]['seconds']:7.1f} s  threads {rows[name]['threads']}  "
                      f"accuracy {rows[name]['acc'][0]:.4f}, {rows[name]['acc'][1]:.4f} after resuming"  # type: ignore[index]
                      + (f"  ({rows[name]['why']})" if name == "default" else ""), flush=True)
    finally:
        for p in neighbours:
            p.terminate()
    best = min(float(rows[n]["seconds"]) for n in ("--threads 1", "--threads 2"))  # type: ignore[arg-type]
    print(f"with {args.neighbours} CPU-bound neighbour(s) on {len(os.sched_getaffinity(0))} cores, "
          f"OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', 'unset (the command sets passive)')}:")
    for name, row in rows.items():
        print(f"  {name:<12} {float(row['seconds']) / best:5.2f}x the best of --threads 1 and 2")  # type: ignore[arg-type]
    ratio = float(rows["default"]["seconds"]) / best  # type: ignore[arg-type]
    print(f"target: default <= 2x the best: {'met' if ratio <= 2 else 'MISSED'} ({ratio:.2f}x)")


if __name__ == "__main__":
    main()
