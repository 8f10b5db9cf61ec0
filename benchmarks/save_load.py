"""Save/load throughput of torchresume vs torch.save and safetensors, fsync included.

Run: .venv/bin/python benchmarks/save_load.py [--sizes-mib 512 1024] [--runs 5] [--record]
(--record stores the table in benchmarks/results.json for docs/benchmarks.md and plots.py)

Each method saves the same state, in turn, run after run, (many 4 MiB float32 tensors, allocated once
and reused) to the same disk and fsyncs it; loads read those files back. The
disk's direct write bandwidth (one preallocated buffer, os.write + fsync) is
measured in the same run, and torchresume's save with its O_DIRECT path turned off
("tr buffered": the page cache, then fsync). Medians over --runs; ratios printed side by side.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import results  # benchmarks/results.py: the script's own directory is on sys.path
import torch
from safetensors.torch import load_file as st_load
from safetensors.torch import save_file as st_save

import torchresume as tr
import torchresume.storage.local as local
from torchresume.format import checksum
from torchresume.format.native import tensor_bytes
from torchresume.inspection import describe

TENSOR_ELEMS = 1 << 20  # 4 MiB of float32


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def direct_write(path: str, buf: torch.Tensor) -> None:
    view = memoryview(buf.numpy())  # type: ignore[arg-type]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        pos = 0
        while pos < len(view):
            pos += os.write(fd, view[pos:pos + (256 << 20)])
        os.fsync(fd)
    finally:
        os.close(fd)


def buffered_save(state: dict[str, torch.Tensor], path: str) -> None:
    """torchresume's save with the O_DIRECT path off (storage/direct.py): page cache + fsync."""
    saved = local.DIRECT_MIN_BYTES
    local.DIRECT_MIN_BYTES = 1 << 62
    try:
        tr.save_checkpoint(state, path)
    finally:
        local.DIRECT_MIN_BYTES = saved


def torch_save(state: dict[str, torch.Tensor], path: str) -> None:
    with open(path, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())


def safetensors_save(state: dict[str, torch.Tensor], path: str) -> None:
    st_save(state, path)
    fsync_path(path)


def timed(fn: Callable[[], object], runs: int, before: Callable[[], None] | None = None) -> float:
    times = []
    for _ in range(runs):
        if before:
            before()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def round_robin(jobs: dict[str, tuple[Callable[[], object], Callable[[], None]]],
                runs: int) -> dict[str, float]:
    """Median seconds of each job, run in turn (A B C D, A B C D, ...) so disk drift hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(runs):
        for name, (fn, before) in jobs.items():
            before()
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(v) for name, v in times.items()}


def bench(size_mib: int, runs: int, workdir: str) -> list[dict[str, object]]:
    """Measure one size, print its table; returns one row per method (seconds and GB/s)."""
    n = size_mib * (1 << 20) // (TENSOR_ELEMS * 4)
    torch.manual_seed(0)
    state = {f"layer{i}.weight": torch.randn(TENSOR_ELEMS) for i in range(n)}
    nbytes = n * TENSOR_ELEMS * 4
    flat = torch.empty(nbytes, dtype=torch.uint8).fill_(1)
    paths = {k: os.path.join(workdir, k) for k in ("direct", "tr.ckpt", "trb.ckpt", "pt", "st")}

    def unlink(key: str) -> Callable[[], None]:
        def go() -> None:
            if os.path.exists(paths[key]):
                os.chmod(paths[key], 0o600)
                os.remove(paths[key])
        return go

    savers: dict[str, tuple[Callable[[], object], Callable[[], None]]] = {
        "direct write": (lambda: direct_write(paths["direct"], flat), unlink("direct")),
        "torchresume": (lambda: tr.save_checkpoint(state, paths["tr.ckpt"]), unlink("tr.ckpt")),
        "tr buffered": (lambda: buffered_save(state, paths["trb.ckpt"]), unlink("trb.ckpt")),
        "torch.save": (lambda: torch_save(state, paths["pt"]), unlink("pt")),
        "safetensors": (lambda: safetensors_save(state, paths["st"]), unlink("st")),
    }
    save = round_robin(savers, runs)
    load = {
        "torchresume": timed(lambda: tr.load_checkpoint(paths["tr.ckpt"]), runs),
        "torch.load": timed(lambda: torch.load(paths["pt"], weights_only=True), runs),
        "safetensors": timed(lambda: st_load(paths["st"]), runs),
    }
    meta = timed(lambda: describe(paths["tr.ckpt"]), max(runs, 5))
    hashing = timed(lambda: [checksum.digest(tensor_bytes(t)) for t in state.values()], runs)
    gbs = {k: nbytes / v / 1e9 for k, v in save.items()}
    print(f"\n== {size_mib} MiB state, {n} tensors, median of {runs} runs ==")
    print(f"{'save (fsync)':<14}{'s':>8}{'GB/s':>8}")
    for k, v in save.items():
        print(f"{k:<14}{v:>8.3f}{gbs[k]:>8.2f}")
    best_other = max(gbs["torch.save"], gbs["safetensors"])
    print(f"torchresume / torch.save      = {gbs['torchresume'] / gbs['torch.save']:.2f}x")
    print(f"torchresume / best other      = {gbs['torchresume'] / best_other:.2f}x")
    print(f"torchresume / direct write    = {gbs['torchresume'] / gbs['direct write']:.2f}x")
    print(f"O_DIRECT / buffered (tr)      = {gbs['torchresume'] / gbs['tr buffered']:.2f}x")
    print(f"checksums (xxh3) = {100 * hashing / save['torchresume']:.1f}% of the torchresume save")
    print(f"{'load':<14}{'s':>8}{'GB/s':>8}")
    for k, v in load.items():
        print(f"{k:<14}{v:>8.3f}{nbytes / v / 1e9:>8.2f}")
    print(f"torchresume load / torch.load = {load['torch.load'] / load['torchresume']:.2f}x speed")
    print(f"torchresume load / safetensors= {load['safetensors'] / load['torchresume']:.2f}x speed")
    print(f"metadata only (inspect header): {meta * 1000:.1f} ms")
    rows: list[dict[str, object]] = []
    for k, v in save.items():
        row: dict[str, object] = {"size_mib": size_mib, "method": k, "save_s": round(v, 4),
                                  "save_gbs": round(gbs[k], 3)}
        loader = {"torchresume": "torchresume", "torch.save": "torch.load", "safetensors": "safetensors"}.get(k)
        if loader:
            row.update(load_s=round(load[loader], 4), load_gbs=round(nbytes / load[loader] / 1e9, 3))
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mib", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir in ./)")
    parser.add_argument("--record", action="store_true", help="store the tables in --results")
    parser.add_argument("--results", default=str(results.RESULTS), help="the results file (JSON)")
    args = parser.parse_args()
    workdir = args.dir or tempfile.mkdtemp(prefix=".bench-", dir=".")
    rows = []
    try:
        for size in args.sizes_mib:
            rows += bench(size, args.runs, workdir)
    finally:
        if not args.dir:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.record:
        results.record("save_load", rows, path=Path(args.results),
                       units={"save_s": "s", "save_gbs": "GB/s", "load_s": "s", "load_gbs": "GB/s"},
                       notes=f"durable saves (fsync), loads from the page cache; medians of {args.runs}")


if __name__ == "__main__":
    main()
