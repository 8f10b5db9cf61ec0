"""A real Lightning Trainer.fit with torchresume's plugin, for tests/integration/test_lightning.py.

usage: python lightning_run.py RUN_DIR NUM_WORKERS [EPOCHS [ddp] [async] [stock] [hook]]
       torchrun --standalone --nproc-per-node 2 lightning_run.py RUN_DIR NUM_WORKERS EPOCHS ddp [async] [fork]

Trains a small MLP with dropout on a plain ``DataLoader(shuffle=True)`` whose dataset draws
random noise in ``__getitem__`` (in the workers when there are any), checkpointing every 2
steps into RUN_DIR through TorchResumeCheckpoint, validating at each epoch's end (whose DataLoader
draws from the global RNG too), and resumes with ``ckpt_path="last"``. Each
training step prints ``step N`` and appends ``N digest`` (the batch's bytes) to RUN_DIR/batches;
a finished run writes RUN_DIR/final.ckpt (weights, optimizer state, every RNG). With ``ddp``
it trains under Lightning's DDP strategy, one rank per torchrun process (gloo on CPU): rank r logs
its batches to RUN_DIR/batches-r and writes RUN_DIR/final-r.ckpt, rank 0 alone prints the steps,
and each rank ends with ``torchresume.distributed.end_process``; its DataLoader workers start from a
forkserver (forked from a rank they can hang at their start: ``fork_hazard``), or by fork with
``fork``. With ``async`` checkpoints are written in the background (``TorchResumeIO(async_save=True)``).
With ``hook`` the training DataLoader is made by the module's ``train_dataloader()`` (not
given to ``fit``, not wrapped in ``resumable``).
With ``stock`` the same run checkpoints the way stock Lightning does, for benchmarks/lightning_resume.py:
its own ``ModelCheckpoint`` (every 2 steps, ``save_last=True``) and checkpoint IO (``torch.save``
``.ckpt``), no torchresume plugin.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import sys

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader

import torchresume as tr
from tests.fault.dataloader_run import Noisy  # the same noisy data as the DataLoader kill tests
from torchresume.integrations.lightning import TorchResumeCheckpoint, TorchResumeIO


class Net(pl.LightningModule):
    def __init__(self, lr: float = 0.05, width: int = 16) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(6, width), nn.ReLU(), nn.Dropout(0.2), nn.Linear(width, 2))
        self.log_path = ""
        self.quiet = False  # a rank other than 0 does not print its steps

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        digest = hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest()[:16]
        with open(self.log_path, "a") as f:
            f.write(f"{self.global_step + 1} {digest}\n")
        if not self.quiet:
            print(f"step {self.global_step + 1}", flush=True)
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["extra_note"] = {"saved_at_step": self.global_step, "tags": ("a", "b")}


def every_rng() -> dict[str, torch.Tensor]:
    """This process's RNG streams (torch, numpy, python) as tensors."""
    keys, pos = np.random.get_state()[1:3]
    _, internal, gauss = random.getstate()
    return {"rng.torch": torch.get_rng_state(), "rng.numpy": torch.from_numpy(np.append(keys, pos).astype(np.int64)),
            "rng.python": torch.tensor([*internal, 0 if gauss is None else 1], dtype=torch.int64)}


def main() -> None:
    run_dir, workers = sys.argv[1], int(sys.argv[2])
    epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    ddp, async_save, stock = ("ddp" in sys.argv[4:], "async" in sys.argv[4:], "stock" in sys.argv[4:])
    rank = int(os.environ.get("RANK", "0"))
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    model = Net()
    model.log_path = os.path.join(run_dir, f"batches-{rank}" if ddp and rank else "batches")
    model.quiet = rank != 0
    context = None
    if ddp and workers and "fork" not in sys.argv[4:]:
        # Workers forked from a rank can hang at their start (torchresume's fork_hazard says so):
        # the runs follow its advice, from a forkserver that has imported this script and the dataset.
        multiprocessing.set_forkserver_preload(["__main__", "lightning.pytorch", "tests.fault.dataloader_run"])
        context = "forkserver"
    loader = DataLoader(Noisy(80), batch_size=8, shuffle=True, num_workers=workers, multiprocessing_context=context)
    ckpt: pl.Callback = (ModelCheckpoint(run_dir, every_n_train_steps=2, save_last=True) if stock else
                         TorchResumeCheckpoint(run_dir, prefix="lit", every_n_train_steps=2, keep=3))
    plugins = [] if stock else [TorchResumeIO(async_save=async_save)]
    devices = int(os.environ.get("WORLD_SIZE", "1"))  # under torchrun: one per rank
    trainer = pl.Trainer(max_epochs=epochs, callbacks=[ckpt], logger=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=devices, deterministic=True,
                         plugins=plugins, **({"strategy": "ddp"} if ddp else {}))
    if "hook" in sys.argv[4:]:  # the module's train_dataloader() makes the same loader; fit gets none
        model.train_dataloader = lambda: DataLoader(  # type: ignore[method-assign]
            Noisy(80), batch_size=8, shuffle=True, num_workers=workers, multiprocessing_context=context)
    trainer.fit(model, None if "hook" in sys.argv[4:] else loader, DataLoader(Noisy(24), batch_size=8),
                ckpt_path="last")
    opt = trainer.optimizers[0]
    tr.save_checkpoint({**model.state_dict(), "optimizer": opt.state_dict(), **every_rng()},
                       os.path.join(run_dir, f"final-{rank}.ckpt" if ddp else "final.ckpt"))
    if rank == 0:
        print(f"finished {trainer.global_step}", flush=True)
    if ddp:
        from torchresume.distributed import end_process
        trainer.strategy.barrier("final files written")
        end_process(0)


if __name__ == "__main__":
    main()
