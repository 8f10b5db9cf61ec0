"""Where a synchronous CheckpointManager save of the save_stall state spends its time.

Run: .venv/bin/python benchmarks/sync_save_parts.py [--gib 1] [--saves 3] [--dir DIR]

Saves the ~``--gib`` GiB MLP + Adam state of benchmarks/save_stall.py with keep=1 (each save
deletes the previous one, as in save_stall's table) and times, per save, the parts it calls:
encoding, the O_DIRECT sink's writes, the fsyncs and retention (the unlink of the previous file).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from save_stall import Trainer

import torchresume.manager as manager
import torchresume.storage.direct as direct
from torchresume import CheckpointManager

spent: collections.defaultdict[str, float] = collections.defaultdict(float)


def timed(owner: Any, name: str, label: str) -> None:
    """Replace ``owner.name`` by the same callable that adds its seconds to ``spent[label]``."""
    real: Callable[..., Any] = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            spent[label] += time.perf_counter() - start
    setattr(owner, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--saves", type=int, default=3)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    for owner, name, label in ((manager, "encode_state", "encode"), (direct.DirectSink, "write", "writes"),
                               (os, "fsync", "fsync"), (manager.CheckpointManager, "apply_retention",
                                                        "retention (unlink)")):
        timed(owner, name, label)
    trainer = Trainer(args.gib)
    directory = tempfile.mkdtemp(dir=args.dir)
    try:
        mgr = CheckpointManager(directory, model=trainer.model, optimizer=trainer.opt, keep=1)
        for i in range(1, args.saves + 1):
            trainer.step()
            spent.clear()
            start = time.perf_counter()
            mgr.save(1, i)
            total = time.perf_counter() - start
            print(f"save {i}: {total:.2f} s = " + ", ".join(f"{k} {v:.2f}" for k, v in spent.items()), flush=True)
        mgr.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
