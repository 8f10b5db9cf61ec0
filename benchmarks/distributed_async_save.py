"""How long a sharded save blocks the training loop: synchronous vs async_save=True.

Run: .venv/bin/python benchmarks/distributed_async_save.py [--mib 256] [--ranks 2] [--repeat 3]

One torchrun (gloo, CPU) holds ``--mib`` MiB of float32 in 16 MiB tensors, each
sharded by rows over the ranks as DTensors (as FSDP2 holds them). It saves them
``--repeat`` times synchronously and ``--repeat`` times with async_save, alternating.
For each save it reports, as the slowest rank saw it, the time ``save()`` blocked
and the time until the checkpoint was committed (for async: until ``wait()``
returned). The first async save allocates the staging buffers (first touch); the
later ones reuse them. The machine is shared, so compare figures within one run.
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


def worker(mib: int, repeat: int, directory: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from torchresume.distributed import DistributedCheckpointManager
    dist.init_process_group("gloo")
    world = dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    torch.manual_seed(0)
    rows = 16 * 2**20 // 4 // 1024
    state = {"model": {f"layer{i}.weight": distribute_tensor(torch.randn(rows, 1024), mesh, [Shard(0)])
                       for i in range(max(1, mib // 16))}}
    managers = {mode: DistributedCheckpointManager(os.path.join(directory, mode), prefix="bench", keep=1,
                                                   async_save=mode == "async") for mode in ("sync", "async")}

    def slowest(seconds: float) -> float:
        t = torch.tensor([seconds], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    results: dict[str, list[tuple[float, float]]] = {"sync": [], "async": []}
    for step in range(repeat):
        for mode in (("sync", "async") if step % 2 == 0 else ("async", "sync")):
            mgr = managers[mode]
            dist.barrier()
            start = time.perf_counter()
            mgr.save(state, epoch=1, step=step)
            blocked = time.perf_counter() - start
            mgr.wait()
            results[mode].append((slowest(blocked), slowest(time.perf_counter() - start)))
    for mgr in managers.values():
        mgr.close()
    if dist.get_rank() == 0:
        print("RESULT " + json.dumps({"world": world, "mib": mib, **results}), flush=True)
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mib", type=int, default=256)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--worker", action="store_true")
    p.add_argument("--dir", default="")
    args = p.parse_args()
    if args.worker:
        worker(args.mib, args.repeat, args.dir)
        return
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.ranks),
               __file__, "--worker", "--mib", str(args.mib), "--repeat", str(args.repeat), "--dir", tmp]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    r = json.loads(next(x for x in out.splitlines() if x.startswith("RESULT "))[len("RESULT "):])
    print(f"{r['world']} ranks, {r['mib']} MiB in all (DTensor shards); seconds, slowest rank")
    for mode in ("sync", "async"):
        blocked = [round(b, 3) for b, _ in r[mode]]
        committed = [round(c, 3) for _, c in r[mode]]
        print(f"{mode:>5}: save() blocked {blocked} (median {statistics.median(blocked):.3f}); "
              f"committed after {committed}")


if __name__ == "__main__":
    main()
