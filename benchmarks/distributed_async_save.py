"""How long a sharded save blocks the training loop: synchronous vs async_save=True.

Run: .venv/bin/python benchmarks/distributed_async_save.py [--mib 256] [--ranks 2] [--repeat 3] [--replicated]

One torchrun (gloo, CPU) holds ``--mib`` MiB of float32 in 16 MiB tensors, each
sharded by rows over the ranks as DTensors (as FSDP2 holds them). It saves them
``--repeat`` times synchronously and ``--repeat`` times with async_save, alternating.
For each save it reports, as the slowest rank saw it, the time ``save()`` blocked
and the time until the checkpoint was committed (for async: until ``wait()``
returned). The first async save allocates the staging buffers (first touch); the
later ones reuse them. The machine is shared, so compare figures within one run.

``--replicated``: the tensors are plain and the same on every rank (what DDP holds) instead of
sharded. Each rank writes only its share of a replica (the plan spreads the writes), so from the
second async save on it stages only that share: the run also reports, per save, the bytes each
rank staged (the largest over ranks) and wrote, and DCP's own ``dcp.async_save`` (its default
stager, the same state, ``--repeat`` times) as a third mode, timed the same way.
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


def worker(mib: int, repeat: int, directory: str, replicated: bool) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from torchresume.distributed import ShardedStore
    dist.init_process_group("gloo")
    world = dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    torch.manual_seed(0)
    rows = 16 * 2**20 // 4 // 1024
    layers = [torch.randn(rows, 1024) for _ in range(max(1, mib // 16))]
    state = {"model": {f"layer{i}.weight": t if replicated else distribute_tensor(t, mesh, [Shard(0)])
                       for i, t in enumerate(layers)}}
    managers = {mode: ShardedStore(os.path.join(directory, mode), prefix="bench", keep=1,
                                                   async_save=mode == "async") for mode in ("sync", "async")}
    modes = ("sync", "async", "dcp") if replicated else ("sync", "async")

    def slowest(seconds: float) -> float:
        t = torch.tensor([seconds], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def largest(n: int) -> int:
        t = torch.tensor([n], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    results: dict[str, list[tuple[float, float]]] = {mode: [] for mode in modes}
    staged: list[int] = []
    for step in range(repeat):
        for mode in (modes if step % 2 == 0 else modes[::-1]):
            dist.barrier()
            start = time.perf_counter()
            if mode == "dcp":
                import torch.distributed.checkpoint as dcp
                future = dcp.async_save(state, checkpoint_id=os.path.join(directory, "dcp", str(step)))
                blocked = time.perf_counter() - start
                getattr(future, "upload_completion", future).result()
            else:
                managers[mode].save(state, epoch=1, step=step)
                blocked = time.perf_counter() - start
                managers[mode].wait()
            results[mode].append((slowest(blocked), slowest(time.perf_counter() - start)))
            if mode == "async":
                staged.append(largest(managers["async"]._stager.buffers.nbytes))
    written = [sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(directory, "async"))
                   for f in fs if f.startswith(f"shard-{r:05d}-")) for r in range(world)]
    for mgr in managers.values():
        mgr.close()
    if dist.get_rank() == 0:
        print("RESULT " + json.dumps({"world": world, "mib": mib, "replicated": replicated, "staged": staged,
                                      "written": written, **results}), flush=True)
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mib", type=int, default=256)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--replicated", action="store_true", help="plain replicated tensors (DDP), not DTensor shards")
    p.add_argument("--worker", action="store_true")
    p.add_argument("--dir", default="")
    args = p.parse_args()
    if args.worker:
        worker(args.mib, args.repeat, args.dir, args.replicated)
        return
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.ranks),
               __file__, "--worker", "--mib", str(args.mib), "--repeat", str(args.repeat), "--dir", tmp,
               *(["--replicated"] if args.replicated else [])]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    r = json.loads(next(x for x in out.splitlines() if x.startswith("RESULT "))[len("RESULT "):])
    kind = "replicated on every rank (DDP)" if r["replicated"] else "DTensor shards"
    print(f"{r['world']} ranks, {r['mib']} MiB in all ({kind}); seconds, slowest rank")
    for mode in ("sync", "async", "dcp") if r["replicated"] else ("sync", "async"):
        blocked = [round(b, 3) for b, _ in r[mode]]
        committed = [round(c, 3) for _, c in r[mode]]
        print(f"{mode:>5}: save() blocked {blocked} (median {statistics.median(blocked):.3f}); "
              f"committed after {committed}")
    mib = [round(n / 2**20, 1) for n in r["staged"]]
    print(f"async: MiB staged per save (largest rank) {mib}; MiB written per rank (last save) "
          f"{[round(n / 2**20, 1) for n in r['written']]}")


if __name__ == "__main__":
    main()
