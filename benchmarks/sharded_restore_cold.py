"""Cold restore of one rank's 512 MiB, torchresume vs DCP, outside torchrun (issue 23's 1 GiB gap).

Run: .venv/bin/python benchmarks/sharded_restore_cold.py [--mib 512] [--repeat 5] [--dtensor]

One process saves ``--mib`` MiB of 64 MiB float32 tensors with ``DistributedCheckpointManager``
(no process group: one rank) and with ``dcp.save`` (FileSystemWriter), then restores each
``--repeat`` times, alternating which goes first, after dropping every file of both from the page
cache (``posix_fadvise DONTNEED``, after ``os.sync``), and checks the values. ``--dtensor``: the
tensors are DTensors on a one-rank CPU mesh (a gloo group of one), as FSDP2 holds them. Run two at
once to see two ranks' reads compete for the disk. Prints each time and the median ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from typing import Any


def drop(root: str) -> None:
    os.sync()
    for folder, _, names in os.walk(root):
        for name in names:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mib", type=int, default=512)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--dtensor", action="store_true")
    args = p.parse_args()
    import torch
    import torch.distributed.checkpoint as dcp

    from torchresume.distributed import DistributedCheckpointManager
    warnings.filterwarnings("ignore")
    root = tempfile.mkdtemp()
    make: Any = lambda t: t  # noqa: E731
    if args.dtensor:
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import DTensor, Shard
        dist.init_process_group("gloo", init_method=f"file://{root}/store", rank=0, world_size=1)
        mesh = init_device_mesh("cpu", (1,))
        make = lambda t: DTensor.from_local(t, mesh, [Shard(0)])  # noqa: E731
    shape = (16384, 1024)  # 64 MiB of float32
    state = {"model": {f"w{i}": make(torch.randn(shape)) for i in range(max(1, args.mib // 64))}}
    mgr = DistributedCheckpointManager(os.path.join(root, "tr"), prefix="bench", keep=1)
    path = mgr.save(state, epoch=1, step=1)
    dcp.save(state, checkpoint_id=os.path.join(root, "dcp"))
    times: dict[str, list[float]] = {"torchresume": [], "dcp": []}
    for r in range(args.repeat):
        for method in (("torchresume", "dcp") if r % 2 == 0 else ("dcp", "torchresume")):
            drop(root)
            into = {"model": {k: make(torch.empty(shape)) for k in state["model"]}}
            start = time.perf_counter()
            if method == "torchresume":
                mgr.restore(into, path=path, announce=False)
            else:
                dcp.load(into, checkpoint_id=os.path.join(root, "dcp"))
            times[method].append(time.perf_counter() - start)
            local = (lambda t: t.to_local()) if args.dtensor else (lambda t: t)
            assert all(torch.equal(local(into["model"][k]), local(state["model"][k])) for k in state["model"])
    ratio = statistics.median(times["torchresume"]) / statistics.median(times["dcp"])
    print(f"{args.mib} MiB{' (DTensor)' if args.dtensor else ''}, cold restore, seconds: "
          + "; ".join(f"{m} {[round(t, 3) for t in v]}" for m, v in times.items()) + f"; median tr/DCP {ratio:.2f}")


if __name__ == "__main__":
    main()
