"""The async stall's copy alone: torchresume's StagingBuffers vs DCP's DefaultStager, alternating.

Run: .venv/bin/python benchmarks/staging_copy.py [--gib 1] [--rounds 8]

Stages the ~``--gib`` GiB MLP + Adam state of benchmarks/save_stall.py into each one's reused
buffers (both warmed once first), in turn ``--rounds`` times, and prints each time and the
medians: the comparison behind save_stall's "<= DCP async_save stall" row with more samples.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from save_stall import Trainer
from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

from torchresume.staging import StagingBuffers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    trainer = Trainer(args.gib)
    ours = StagingBuffers()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "pinning needs CUDA"
        dcp = DefaultStager(StagingOptions(use_pinned_memory=True, use_shared_memory=False,
                                           use_async_staging=False, use_non_blocking_copy=False))
    stagers: dict[str, Callable[[Any], Any]] = {"torchresume StagingBuffers": ours.stage,
                                                "DCP DefaultStager": dcp.stage}
    times: dict[str, list[float]] = {name: [] for name in stagers}
    for stage in stagers.values():
        stage(trainer.state())  # allocate + first touch, untimed
    for _ in range(args.rounds):
        for name, stage in stagers.items():
            start = time.perf_counter()
            stage(trainer.state())
            times[name].append(time.perf_counter() - start)
    for name, got in times.items():
        print(f"{name:28} median {statistics.median(got):.3f} s  ({', '.join(f'{t:.3f}' for t in got)})")


if __name__ == "__main__":
    main()
