"""Training workloads that draw from every RNG on every step, run as real processes.

``python rng_workload.py fit RUN_DIR``  Model.fit with ModelCheckpoint, resume="auto"
``python rng_workload.py loop RUN_DIR`` a custom loop with CheckpointManager + guard()
A third argument ``async`` turns on background saves (async_save=True) in either; ``overlap``
turns on overlapped staging too, and marks each deferred copy in flight with a file
``.copy-in-flight-{pid}-{n}`` in RUN_DIR for the killer (tests/fault/killing.py) to aim at.

Each step draws from torch (dropout, and data in the loop), python ``random``
and numpy, so a resume that does not restore one of them ends elsewhere.
Each completed step prints ``step <global_step>`` (flushed), which is what the
killer in tests/fault/killing.py waits for. A non-trained 8 MiB parameter (in the optimizer, so
overlapped staging copies it after the save returned) makes every checkpoint write and copy long
enough to be caught in flight.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

import torchresume as tr
from torchresume.data import ArrayDataset

EPOCHS, STEPS, BATCH = 4, 24, 8
SAVE_EVERY = 4
BALLAST = 2 << 20  # float32 elements: 8 MiB in every checkpoint


def seed_all() -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)


def network() -> nn.Module:
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 4))
    net.ballast = nn.Parameter(torch.zeros(BALLAST), requires_grad=False)  # no gradient: SGD leaves it
    return net


def mark_copies(run_dir: str) -> None:
    """From a save that left copies for later until they are complete (by the next step's gate or
    the background thread), a marker file names this process: the killer's ``mid-copy`` aim."""
    from torchresume.snapshot import Snapshot
    from torchresume.staging import StagingBuffers

    snapshot, gate, copy_rest = StagingBuffers.snapshot, Snapshot.gate, Snapshot.copy_rest
    made = iter(range(1 << 30))

    def marked(self: StagingBuffers, *args: object) -> Snapshot:
        staged = snapshot(self, *args)  # type: ignore[arg-type]
        if staged.deferred:  # one name per save: the killer tells a new copy from one it saw
            staged.marker = os.path.join(run_dir, f".copy-in-flight-{os.getpid()}-{next(made)}")  # type: ignore[attr-defined]
            open(staged.marker, "w").close()  # type: ignore[attr-defined]
        return staged

    def then_unmark(real: Callable[[Snapshot], None]) -> Callable[[Snapshot], None]:
        def run(self: Snapshot) -> None:
            real(self)
            with contextlib.suppress(FileNotFoundError, AttributeError):
                os.unlink(self.marker)  # type: ignore[attr-defined]  # complete: no longer in flight
        return run
    StagingBuffers.snapshot = marked  # type: ignore[method-assign]
    Snapshot.gate = then_unmark(gate)  # type: ignore[method-assign]
    Snapshot.copy_rest = then_unmark(copy_rest)  # type: ignore[method-assign]


def noisy_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy scaled by a python draw, plus a numpy-drawn term: both RNGs on every call."""
    scale = 1.0 + random.random()
    shift = float(np.random.standard_normal())
    return nn.functional.cross_entropy(out, y) * scale + 0.01 * shift * out.mean()


def data() -> ArrayDataset:
    g = torch.Generator().manual_seed(11)
    x = torch.randn(STEPS * BATCH, 16, generator=g)
    y = (x[:, :4].argmax(1)).long()
    return ArrayDataset(x, y, BATCH, seed=5)


def run_fit(run_dir: str, mode: str = "sync") -> None:
    seed_all()
    net = network()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    model = tr.Model(net, noisy_loss, opt, {"acc", "loss"}, device="cpu")
    printer = tr.LambdaCallback(on_train_step_end=lambda c: print(f"step {c.global_step}", flush=True))
    cfg = tr.CheckpointConfig(save_checkpoint_steps=SAVE_EVERY, keep_checkpoint_max=3, async_save=mode != "sync",
                              overlap=mode == "overlap")
    train, valid = data(), data()
    model.fit(EPOCHS, train, valid, callbacks=[tr.ModelCheckpoint("fit", run_dir, cfg), printer],
              resume="auto")


class Position(tr.Stateful):
    def __init__(self) -> None:
        self.global_step = 0

    def state_dict(self) -> dict[str, int]:
        return {"global_step": self.global_step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.global_step = int(state["global_step"])


def run_loop(run_dir: str, mode: str = "sync") -> None:
    seed_all()
    net = network()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    pos = Position()
    mgr = tr.CheckpointManager(run_dir, model=net, optimizer=opt, prefix="loop", keep=3, async_save=mode != "sync",
                               overlap=mode == "overlap", extra={"position": pos})
    mgr.restore_latest()
    total = EPOCHS * STEPS
    net.train()
    with mgr.guard() as guard:
        while pos.global_step < total:
            x = torch.randn(BATCH, 16)  # the data come from torch's global generator
            pick = random.randrange(4)
            y = (x[:, pick] > float(np.random.standard_normal())).long() + 2 * (x[:, 3 - pick] > 0).long()
            opt.zero_grad(set_to_none=True)
            noisy_loss(net(x), y).backward()
            opt.step()
            pos.global_step += 1
            epoch, step = divmod(pos.global_step - 1, STEPS)
            print(f"step {pos.global_step}", flush=True)
            guard.step_done(epoch + 1, step + 1, pos.global_step)
            if pos.global_step % SAVE_EVERY == 0:
                mgr.save(epoch + 1, step + 1, pos.global_step)
    mgr.close()


if __name__ == "__main__":
    mode = sys.argv[3] if len(sys.argv) > 3 else "sync"
    if mode == "overlap":
        os.makedirs(sys.argv[2], exist_ok=True)
        mark_copies(sys.argv[2])
    {"fit": run_fit, "loop": run_loop}[sys.argv[1]](sys.argv[2], mode)
