"""Sharded save and load at 1, 2 and 4 ranks: torchresume vs DCP's FileSystemWriter/Reader vs gather + torch.save.

Run: .venv/bin/python benchmarks/distributed_save.py [--gib 1.0] [--ranks 1 2 4] [--repeat 2]

For each rank count one torchrun (gloo, CPU) holds a state of ``--gib`` GiB in
64 MiB float32 tensors, each sharded by rows over the ranks as DTensors (as
FSDP2 holds them). In the same processes, one after the other and alternating
the order every repeat (the machine is shared, so noise hits all three), it
 * saves and restores with ShardedStore,
 * saves and loads with DCP's FileSystemWriter/FileSystemReader (defaults: one thread, fsync),
 * gathers every shard to rank 0 and torch.save's one file (then fsync, as the others do),
   and loads it on rank 0 and scatters the shards back.
Each figure is the best of ``--repeat`` runs of the slowest rank (barrier to barrier);
every save goes to a fresh location, and what it wrote is deleted outside the timings.
Loads read files the save just wrote, so they mostly come from the page cache.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TENSOR_MIB = 64


def make_state(gib: float) -> dict[str, Any]:
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard
    world, rank = dist.get_world_size(), dist.get_rank()
    mesh = init_device_mesh("cpu", (world,))
    cols = 1024
    rows = TENSOR_MIB * 2**20 // 4 // cols
    count = max(1, round(gib * 1024 / TENSOR_MIB))
    local_rows = rows // world
    gen = torch.Generator().manual_seed(rank)
    return {"model": {f"layer{i}.weight": DTensor.from_local(torch.randn(local_rows, cols, generator=gen), mesh,
                                                             [Shard(0)]) for i in range(count)}}


def timed(fn: Callable[[int], Any], i: int) -> float:
    import torch.distributed as dist
    dist.barrier()
    start = time.perf_counter()
    fn(i)
    dist.barrier()
    return time.perf_counter() - start


Pair = tuple[Callable[[int], Any], Callable[[int], Any]]


def torchresume_pair(state: dict[str, Any], root: str) -> Pair:
    import logging

    try:
        from torchresume.distributed import ShardedStore
    except ImportError:  # a tree before 0.3's rename (benchmarks/before_after.py runs older trees)
        from torchresume.distributed import DistributedCheckpointManager as ShardedStore
    logging.getLogger("torchresume").setLevel(logging.WARNING)  # no "resumed from" line per restore
    mgr = ShardedStore(os.path.join(root, "tr"), prefix="bench", keep=100)
    return (lambda i: mgr.save(state, epoch=1, step=i)), (lambda i: mgr.restore(state))


def dcp_pair(state: dict[str, Any], root: str) -> Pair:
    import torch.distributed.checkpoint as dcp
    return (lambda i: dcp.save(state, storage_writer=dcp.FileSystemWriter(os.path.join(root, f"dcp{i}"))),
            lambda i: dcp.load(state, storage_reader=dcp.FileSystemReader(os.path.join(root, f"dcp{i}"))))


def gather_pair(state: dict[str, Any], root: str) -> Pair:
    import torch
    import torch.distributed as dist
    world, rank = dist.get_world_size(), dist.get_rank()
    tensors = state["model"]

    def save(i: int) -> None:
        path = os.path.join(root, f"gathered{i}.pt")
        full = {}
        for name, dt in tensors.items():
            local = dt.to_local()
            parts = [torch.empty_like(local) for _ in range(world)] if rank == 0 else None
            dist.gather(local, parts, dst=0)
            if rank == 0:
                full[name] = torch.cat(parts or [])
        if rank == 0:
            with open(path, "wb") as f:
                torch.save(full, f)
                f.flush()
                os.fsync(f.fileno())

    def load(i: int) -> None:
        path = os.path.join(root, f"gathered{i}.pt")
        full = torch.load(path, mmap=True, weights_only=True) if rank == 0 else None
        for name, dt in tensors.items():
            local = dt.to_local()
            dist.scatter(local, list(full[name].chunk(world)) if full is not None else None, src=0)
    return save, load


METHODS = {"torchresume": torchresume_pair, "dcp": dcp_pair, "gather": gather_pair}


def worker(args: argparse.Namespace) -> None:
    import torch.distributed as dist
    dist.init_process_group("gloo")
    state = make_state(args.gib)
    pairs = {name: make(state, args.dir) for name, make in METHODS.items()}
    best: dict[str, list[float]] = {f"{n}_{op}": [] for n in METHODS for op in ("save", "load")}
    order = list(METHODS)
    for i in range(args.repeat):
        for name in order:
            save, load = pairs[name]
            best[f"{name}_save"].append(timed(save, i))
            best[f"{name}_load"].append(timed(load, i))
            dist.barrier()
            if dist.get_rank() == 0:  # outside the timings: free the disk before the next method
                for entry in Path(args.dir).iterdir():
                    if entry.is_dir():
                        shutil.rmtree(entry, ignore_errors=True)
                    elif entry.suffix == ".pt":
                        entry.unlink()
            dist.barrier()
        order.reverse()
    if dist.get_rank() == 0:
        Path(args.out).write_text(json.dumps({k: min(v) for k, v in best.items()}))
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # gloo aborted about one interpreter teardown in 20 here (train.distributed.end_process)


def launch(nproc: int, args: argparse.Namespace) -> dict[str, float]:
    root = tempfile.mkdtemp(prefix="dist-bench-", dir=args.dir)
    out = os.path.join(root, "result.json")
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    cmd = [torchrun, "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1", "--master-port",
           str(29400 + nproc), __file__, "--worker", "--gib", str(args.gib), "--repeat", str(args.repeat),
           "--dir", root, "--out", out]
    try:
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        return json.loads(Path(out).read_text())
    finally:
        shutil.rmtree(root, ignore_errors=True)


def table(results: dict[int, dict[str, float]], gib: float) -> str:
    lines = [f"state {gib:g} GiB; seconds (GiB/s); ratio = other / torchresume (above 1: torchresume faster)",
             f"{'ranks':>5} {'op':>4}  {'torchresume':>16} {'DCP FileSystem':>16} {'gather+torch.save':>18}"
             f" {'DCP/tr':>7} {'gather/tr':>9}"]
    for n, r in sorted(results.items()):
        for op in ("save", "load"):
            tr, dc, ga = r[f"torchresume_{op}"], r[f"dcp_{op}"], r[f"gather_{op}"]
            cells = [f"{t:7.3f} ({gib / t:5.2f})" for t in (tr, dc, ga)]
            lines.append(f"{n:>5} {op:>4}  {cells[0]:>16} {cells[1]:>16} {cells[2]:>18} {dc / tr:7.2f} {ga / tr:9.2f}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gib", type=float, default=1.0, help="state size in GiB (use 0.1 while developing)")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--dir", default=None, help="where to write (default: the system temp dir)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    results = {n: launch(n, args) for n in args.ranks}
    print(table(results, args.gib))


if __name__ == "__main__":
    main()
