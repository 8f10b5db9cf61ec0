"""What one sharded save costs in coordination: metadata bytes and fixed time, by ranks and shards.

Run: .venv/bin/python benchmarks/distributed_metadata.py [--tensors 200] [--worlds 1 2 4]

For each world size W it starts ``torchrun --nproc-per-node W`` (gloo, CPU);
the ranks save a state of ``--tensors`` small tensors, each a DTensor sharded
over all W ranks (so T x W shards, as FSDP2 gives), three times through
ShardedStore, and rank 0 reports the committed checkpoint's
dcp_metadata.json and manifest.json sizes and the median save time. The
tensors are tiny (W x 64 floats), so the time is coordination (plans gathered
to the coordinator, results gathered, commit, barriers), not bytes. Figures
from this 2-core shared machine are for the bytes-per-shard slope; the times
are noisy and only compared side by side within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(tensors: int, directory: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from torchresume.distributed import ShardedStore
    dist.init_process_group("gloo")
    world = dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    torch.manual_seed(0)
    state = {"model": {f"layer{i}.weight": distribute_tensor(torch.randn(world * 8, 8), mesh, [Shard(0)])
                       for i in range(tensors)}}
    mgr = ShardedStore(directory, prefix="bench", keep=1)
    times = []
    for step in range(3):
        dist.barrier()
        start = time.perf_counter()
        path = mgr.save(state, epoch=1, step=step)
        times.append(time.perf_counter() - start)
    if dist.get_rank() == 0:
        sizes = {name: (Path(path) / name).stat().st_size for name in ("dcp_metadata.json", "manifest.json")}
        print("RESULT " + json.dumps({"world": world, "tensors": tensors, "shards": tensors * world,
                                      "save_s": statistics.median(times), **sizes}), flush=True)
    dist.destroy_process_group()


def launch(world: int, tensors: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world),
               __file__, "--worker", "--tensors", str(tensors), "--dir", tmp]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])  # type: ignore[no-any-return]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tensors", type=int, default=200)
    p.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--worker", action="store_true")
    p.add_argument("--dir", default="")
    args = p.parse_args()
    if args.worker:
        worker(args.tensors, args.dir)
        return
    print(f"{'ranks':>5} {'shards':>7} {'dcp_metadata B':>15} {'B/shard':>8} {'manifest B':>11} "
          f"{'B/shard':>8} {'save ms':>8}")
    for world in args.worlds:
        r = launch(world, args.tensors)
        print(f"{r['world']:>5} {r['shards']:>7} {r['dcp_metadata.json']:>15} "
              f"{r['dcp_metadata.json'] / r['shards']:>8.0f} {r['manifest.json']:>11} "
              f"{r['manifest.json'] / r['shards']:>8.0f} {1000 * r['save_s']:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
