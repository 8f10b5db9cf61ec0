"""How long ``import torchresume`` takes beyond ``import torch``, in fresh interpreters.

    .venv/bin/python benchmarks/import_time.py [--runs 7] [--src DIR]

``--src`` measures another checkout's package (e.g. an older commit in a git
worktree) side by side with this one. Prints medians of alternating runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


def once(src: str) -> tuple[float, float]:
    """(seconds for ``import torchresume`` in all, of which ``import torch``), from -X importtime."""
    env = {**os.environ, "PYTHONPATH": src}
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", "import torchresume"], check=True,
                         env=env, capture_output=True, text=True).stderr
    cumulative = {}
    for line in err.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cum, name = (part.strip() for part in line[len("import time:"):].split("|"))
            if cum.isdigit():
                cumulative.setdefault(name, int(cum))
    return cumulative["torchresume"] / 1e6, cumulative.get("torch", 0) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--src", default=None, help="another checkout's src/ to compare with")
    args = parser.parse_args()
    sources = {"this checkout": HERE, **({"--src": args.src} if args.src else {})}
    own: dict[str, list[float]] = {k: [] for k in sources}
    heavy = ("matplotlib", "torchresume.train", "torchresume.data", "torchresume.app", "torchresume.models",
             "torchresume.demo")
    probe = f"import sys, torchresume; print(len([m for m in sys.modules if m.startswith({heavy!r})]))"
    for _ in range(args.runs):
        for k, src in sources.items():
            total, torch_part = once(src)
            own[k].append(total - torch_part)
    for k, src in sources.items():
        count = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                               env={**os.environ, "PYTHONPATH": src}).stdout.strip()
        print(f"import torchresume ({k}): {statistics.median(own[k]) * 1000:.0f} ms beyond torch "
              f"(median of {args.runs}); harness/app modules loaded: {count}")


if __name__ == "__main__":
    main()
