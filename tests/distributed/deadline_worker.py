"""A worker for tests/distributed/test_deadline.py: rank 1's storage hangs in one save, under torchrun.

    torchrun --nproc-per-node 2 tests/distributed/deadline_worker.py SCENARIO DIR OUT

Rank 1's part writes of any checkpoint of step 4 (``*_4.ckpt``) stall for ``STALL_S`` seconds, far
past the deadline (``DEADLINE_S``), as a hung NFS mount or object store would; every other write
goes through. Each rank writes ``OUT/rank{r}.json`` with what it observed. Scenarios:

- ``manager``: ShardedStore, sync then async: saves of steps 2, 4 (stalled) and 6;
- ``train``: Model.train with ModelCheckpoint saving every 2 steps (sync and async with
  ``on_save_deadline="continue"``, then sync with ``"stop"``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from torchresume.data import ArrayDataset
from torchresume.distributed import ShardedStore
from torchresume.train import CheckpointConfig, Model, ModelCheckpoint
from torchresume.train.distributed import die_with_launcher, end_process

DEADLINE_S = 2.0
STALL_S = 30.0


def rank() -> int:
    return dist.get_rank()


def stall_rank1_at_step4() -> None:
    """On rank 1, every part write into a checkpoint of step 4 sleeps ``STALL_S`` first."""
    if rank() != 1:
        return
    from torchresume.distributed import writer

    real = writer.write_part

    def stalled(path: str, *args: Any, **kwargs: Any) -> Any:
        if path.rstrip("/").endswith("_4.ckpt"):
            time.sleep(STALL_S)
        return real(path, *args, **kwargs)
    writer.write_part = stalled  # type: ignore[assignment]


def committed(directory: str) -> dict[str, bool]:
    """Each checkpoint entry of ``directory`` and whether it holds a manifest (the commit)."""
    return {n: os.path.exists(os.path.join(directory, n, "manifest.json")) for n in sorted(os.listdir(directory))
            if n.endswith(".ckpt")}


def manager_saves(directory: str, async_save: bool) -> dict[str, Any]:
    """Saves of steps 2, 4 (rank 1 stalls) and 6: the error of step 4, its time, what is committed."""
    torch.manual_seed(0)
    net = nn.Linear(6, 3)
    mgr = ShardedStore(directory, prefix="ddp", keep=5, async_save=async_save,
                                       save_deadline_s=DEADLINE_S)
    mgr.save({"model": net.state_dict()}, epoch=1, step=2, rank_state={"rank": rank()})
    mgr.wait()
    start = time.monotonic()
    try:
        mgr.save({"model": net.state_dict()}, epoch=1, step=4, rank_state={"rank": rank()})
        mgr.wait()  # async: the background save's failure is raised here
        error: BaseException | None = None
    except Exception as exc:
        error = exc
    seconds = time.monotonic() - start
    newest = mgr.newest()
    listing = committed(directory)
    mgr.save({"model": net.state_dict()}, epoch=1, step=6, rank_state={"rank": rank()})
    mgr.close()
    return {"error": type(error).__name__, "message": str(error),
            "cause": type(error.__cause__).__name__ if error is not None else None,
            "seconds": seconds, "newest": newest, "listing": listing,
            "newest_after": ShardedStore(directory, prefix="ddp").newest()}


def _model() -> Model:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    return Model(net, nn.MSELoss(), torch.optim.Adam(net.parameters(), lr=1e-2), device="cpu")


def _data() -> ArrayDataset:
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))
    return ArrayDataset(x, x[:, :2] * 3.0, batch_size=4, seed=2)  # 8 global batches of 4


def train_run(directory: str, **options: Any) -> dict[str, Any]:
    """One epoch of 8 steps, a save every 2; the error that ended it (if any) and what is committed."""
    cfg = CheckpointConfig(save_checkpoint_steps=2, keep_checkpoint_max=10, save_deadline_s=DEADLINE_S, **options)
    try:
        summary = _model().train(1, _data(), [ModelCheckpoint("par", directory, cfg)], resume="none")
        error, steps = None, summary["global_step"]
    except Exception as exc:
        error, steps = exc, None
    dist.barrier()
    return {"error": type(error).__name__ if error is not None else None, "message": str(error), "steps": steps,
            "listing": committed(directory)}


def main() -> None:
    scenario, directory, out = sys.argv[1:4]
    os.makedirs(out, exist_ok=True)
    dist.init_process_group("gloo")  # torch's default timeout (30 min for gloo): far above the deadline
    die_with_launcher()  # a launch the test gives up on (a save that waits out the stall) leaves no orphan
    stall_rank1_at_step4()
    if scenario == "manager":
        result = {"sync": manager_saves(os.path.join(directory, "sync"), False),
                  "async": manager_saves(os.path.join(directory, "async"), True)}
    else:
        result = {"continue": train_run(os.path.join(directory, "continue")),
                  "async": train_run(os.path.join(directory, "async"), async_save=True),
                  "stop": train_run(os.path.join(directory, "stop"), on_save_deadline="stop")}
    print(f"rank {rank()}: " + json.dumps({k: (v.get("seconds"), v["error"]) for k, v in result.items()}))
    with open(os.path.join(out, f"rank{rank()}.json"), "w") as f:
        json.dump(result, f)
    dist.barrier()
    end_process(0)  # the stalled writes are daemon threads: they never hold the exit


if __name__ == "__main__":
    main()
