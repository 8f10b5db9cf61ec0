"""A custom training loop on CheckpointManager, the same file in one process and under torchrun.

Usage: python manager_loop.py DIRECTORY STEPS SAVE_EVERY (or under torchrun). Prints, per rank,
where it resumed from (or that it starts fresh) and how it ended.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

import torchresume as tr

directory, steps, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if "LOCAL_RANK" in os.environ:
    dist.init_process_group("gloo")
rank = dist.get_rank() if dist.is_initialized() else 0
torch.manual_seed(0)
net = torch.nn.Linear(6, 2)
ddp = torch.nn.parallel.DistributedDataParallel(net) if dist.is_initialized() else net
opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
mgr = tr.CheckpointManager(directory, model=net, optimizer=opt, prefix="lin", keep=5)
info = mgr.restore_latest()
start = info["step"] if info else 0
print(f"rank {rank}: " + (f"resumed from {os.path.basename(info['path'])}" if info else "fresh start"), flush=True)
with mgr.guard() as guard:
    for step in range(start + 1, steps + 1):
        x = torch.randn(4, 6)
        loss = ddp(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        guard.step_done(epoch=1, step=step)
        if step % every == 0:
            mgr.save(epoch=1, step=step)
mgr.close()
print(f"rank {rank}: " + (f"trained to step {steps}" if steps > start else f"already finished at step {start}"),
      flush=True)
if dist.is_initialized():
    from torchresume.distributed import end_process
    end_process(0)
