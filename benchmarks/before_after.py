"""Before and after a change, side by side: epoch time and sharded save/restore, alternating trees.

Run: .venv/bin/python benchmarks/before_after.py --before <commit> [--rounds 5] [--gib 0.05]

The ``--before`` commit is checked out into a temporary git worktree; this tree is "after". Each
round runs, for both trees in turn (the order swapped every round, so drift cancels), the same
benchmark scripts of this tree with ``PYTHONPATH`` set to that tree's ``src``:
``epoch_time.py --no-full`` (Model.train ms/step and its ratio to a hand-written loop, measured
side by side inside one process), ``distributed_save.py`` at 1, 2 and 4 ranks (torchresume's
sharded save and restore, seconds), ``save_load.py`` (one process: a durable save and a verified
load through the file layer, seconds) and ``overlap_staging.py`` (``CheckpointManager`` async and
overlapped saves: the training stall and the time lost per save, ms). Prints the medians over the
rounds and after / before.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def run(tree: Path, script: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(HERE / script), *args], cwd=tree, env=env, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"{script} in {tree} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def epoch_figures(out: str) -> dict[str, float]:
    """Model.train ms/step and Model.train / hand loop, from epoch_time.py's output."""
    step = re.search(r"Model\.train\s+median ([0-9.]+) ms/step", out)
    ratio = re.search(r"Model\.train / hand loop = ([0-9.]+)", out)
    assert step and ratio, out
    return {"epoch: Model.train ms/step": float(step[1]), "epoch: Model.train / hand loop": float(ratio[1])}


def dist_figures(out: str) -> dict[str, float]:
    """torchresume's save and load seconds at each world size, from distributed_save.py's table."""
    figures = {}
    for ranks, op, seconds in re.findall(r"^\s*(\d+)\s+(save|load)\s+([0-9.]+)", out, re.MULTILINE):
        figures[f"sharded {op} at {ranks} ranks, s"] = float(seconds)
    assert figures, out
    return figures


def file_figures(out: str) -> dict[str, float]:
    """torchresume's save (fsync) and load seconds, from save_load.py's two tables."""
    save_part, load_part = out.split("save (fsync)", 1)[1].split("\nload", 1)
    figures = {}
    for op, part in (("save", save_part), ("load", load_part)):
        row = re.search(r"^torchresume\s+([0-9.]+)", part, re.MULTILINE)
        assert row, out
        figures[f"file {op} (save_load.py), s"] = float(row[1])
    return figures


def async_figures(out: str) -> dict[str, float]:
    """The stall and the time lost per save (ms) of CheckpointManager's async and overlapped saves."""
    figures = {}
    for method in ("torchresume async", "torchresume overlap"):
        row = re.search(rf"^{method}\s+([0-9.]+)(?: \([^)]*\))?\s+[0-9.]+(?: \([^)]*\))?\s+[-0-9.]+"
                        rf"(?: \([^)]*\))?\s+([-0-9.]+)", out, re.MULTILINE)
        assert row, out
        figures[f"{method.split()[1]} save: stall, ms"] = float(row[1])
        figures[f"{method.split()[1]} save: lost, ms"] = float(row[2])
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", required=True, help="the commit to compare this tree with")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--gib", type=float, default=0.2, help="distributed_save.py's state size")
    p.add_argument("--chunk", type=int, default=100, help="epoch_time.py's steps per chunk")
    p.add_argument("--mib", type=int, default=256, help="save_load.py's state size")
    p.add_argument("--async-gib", type=float, default=0.25, help="overlap_staging.py's state size")
    args = p.parse_args()
    old = Path(tempfile.mkdtemp(prefix="before-")) / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(old), args.before], cwd=ROOT, check=True,
                   capture_output=True)
    trees = {"before": old, "after": ROOT}
    figures: dict[str, dict[str, list[float]]] = {"before": {}, "after": {}}
    try:
        for r in range(args.rounds):
            for name in ("before", "after") if r % 2 == 0 else ("after", "before"):
                got = {**epoch_figures(run(trees[name], "epoch_time.py", "--rounds", "4", "--chunk",
                                           str(args.chunk), "--no-full")),
                       **dist_figures(run(trees[name], "distributed_save.py", "--gib", str(args.gib),
                                          "--ranks", "1", "2", "4", "--repeat", "1")),
                       **file_figures(run(trees[name], "save_load.py", "--sizes-mib", str(args.mib), "--runs", "3")),
                       **async_figures(run(trees[name], "overlap_staging.py", "--sizes", str(args.async_gib),
                                           "--rounds", "1"))}
                for key, value in got.items():
                    figures[name].setdefault(key, []).append(value)
                print(f"round {r + 1} {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in got.items()), flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=False)
    print(f"\nmedians of {args.rounds} alternating rounds; before = {args.before}, after = this tree")
    print(f"{'figure':<40} {'before':>9} {'after':>9} {'after/before':>13}")
    for key in figures["after"]:
        b, a = statistics.median(figures["before"][key]), statistics.median(figures["after"][key])
        print(f"{key:<40} {b:9.3f} {a:9.3f} {a / b:13.3f}")


if __name__ == "__main__":
    main()
