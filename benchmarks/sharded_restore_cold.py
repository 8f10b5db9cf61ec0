"""Cold restore of sharded state, torchresume vs DCP, without distributed_scale.py's counters (issue 23's 1 GiB gap).

Run: .venv/bin/python benchmarks/sharded_restore_cold.py [--mib 512] [--repeat 5] [--dtensor] [--ranks N]

``--ranks 1`` (default): one process saves ``--mib`` MiB of 64 MiB float32 tensors with
``ShardedStore`` (no process group) and with ``dcp.save`` (FileSystemWriter), then
restores each ``--repeat`` times, alternating which goes first, after dropping every file of both
from the page cache (``os.sync``, then ``posix_fadvise DONTNEED``), and checks the values.
``--dtensor``: the tensors are DTensors on a CPU mesh (a gloo group), as FSDP2 holds them.
``--ranks N``: one ``torchrun --standalone`` of N ranks (gloo, CPU), DTensors sharded by rows over
them (``--mib`` in all), a fresh save by each method before each round, times of the slowest rank.
Unlike benchmarks/distributed_scale.py, ``open`` and the collectives are not wrapped to count bytes.
Prints each time and the median ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Any

from distributed_scale import evict  # this folder: run as a script

ROWS, COLS = 16384, 1024  # 64 MiB of float32 per tensor


def drop(root: str) -> None:
    """Every file under ``root`` out of the page cache, once written back (distributed_scale's eviction)."""
    os.sync()
    evict(root)


def run(args: argparse.Namespace, root: str) -> None:
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    from torchresume.distributed import ShardedStore
    warnings.filterwarnings("ignore")
    launched = "LOCAL_RANK" in os.environ
    rank, world = 0, 1
    make: Any = lambda t: t  # noqa: E731
    if args.dtensor or launched:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import DTensor, Shard
        if launched:
            dist.init_process_group("gloo")
        else:
            dist.init_process_group("gloo", init_method=f"file://{root}/store", rank=0, world_size=1)
        rank, world = dist.get_rank(), dist.get_world_size()
        mesh = init_device_mesh("cpu", (world,))
        make = lambda t: DTensor.from_local(t, mesh, [Shard(0)])  # noqa: E731
    local = (lambda t: t.to_local()) if args.dtensor or launched else (lambda t: t)
    shape = (ROWS // world, COLS)
    state = {"model": {f"w{i}": make(torch.randn(shape)) for i in range(max(1, args.mib // 64))}}
    mgr = ShardedStore(os.path.join(root, "tr"), prefix="bench", keep=1)

    def slowest(seconds: float) -> float:
        if not dist.is_initialized():
            return seconds
        t = torch.tensor([seconds], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    times: dict[str, list[float]] = {"torchresume": [], "dcp": []}
    for r in range(args.repeat):
        path = mgr.save(state, epoch=1, step=r)
        dcp.save(state, checkpoint_id=os.path.join(root, f"dcp{r}"))
        for method in (("torchresume", "dcp") if r % 2 == 0 else ("dcp", "torchresume")):
            if rank == 0:
                drop(root)
            if dist.is_initialized():
                dist.barrier()
            into = {"model": {k: make(torch.empty(shape)) for k in state["model"]}}
            start = time.perf_counter()
            if method == "torchresume":
                mgr.restore(into, path=path, announce=False)
            else:
                dcp.load(into, checkpoint_id=os.path.join(root, f"dcp{r}"))
            times[method].append(slowest(time.perf_counter() - start))
            assert all(torch.equal(local(into["model"][k]), local(state["model"][k])) for k in state["model"])
    mgr.close()
    if rank == 0:
        ratio = statistics.median(times["torchresume"]) / statistics.median(times["dcp"])
        kind = f"{world} ranks (torchrun)" if launched else "1 process" + (" (DTensor)" if args.dtensor else "")
        print(f"{args.mib} MiB, {kind}, cold restore, seconds: "
              + "; ".join(f"{m} {[round(t, 3) for t in v]}" for m, v in times.items())
              + f"; median tr/DCP {ratio:.2f}", flush=True)
    if launched:
        from torchresume.distributed import end_process
        end_process(0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mib", type=int, default=512)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--dtensor", action="store_true")
    p.add_argument("--ranks", type=int, default=1)
    p.add_argument("--dir", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if "LOCAL_RANK" in os.environ:
        run(args, args.dir)
        return
    with tempfile.TemporaryDirectory() as root:
        if args.ranks <= 1:
            run(args, root)
            return
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.ranks),
               __file__, "--mib", str(args.mib), "--repeat", str(args.repeat), "--dir", root]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        print(next(line for line in out.splitlines() if "cold restore" in line))


if __name__ == "__main__":
    main()
