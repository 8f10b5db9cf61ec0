"""A Model.fit run on a user's own DataLoader, for the fault tests (run as a separate process).

usage: python dataloader_run.py RUN_DIR plain|stateful NUM_WORKERS SHUFFLE(0|1) [EPOCHS]

Each completed step appends its global step to RUN_DIR/progress (so a test kills only
after new progress); the run ends with RUN_DIR/final.ckpt holding the whole state.
"""

from __future__ import annotations

import os
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import torchresume as tr


class Noisy(Dataset):
    """Fixed data plus random noise drawn in __getitem__ (in the workers when there are any)."""

    def __init__(self, n: int = 96) -> None:
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 6, generator=g)
        self.y = (self.x.sum(1) > 0).long()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i] + 0.05 * torch.randn(6), self.y[i]


class StatefulNoisy(Noisy):
    """The same, with its own generator saved by torchdata in every worker's snapshot.

    StatefulDataLoader restores a dataset's state_dict in each worker, not the workers'
    global RNG (they are re-seeded from base_seed), so augmentation keeps its generator here.
    """

    gen: torch.Generator | None = None

    def _gen(self) -> torch.Generator:
        if self.gen is None:
            self.gen = torch.Generator().manual_seed(torch.initial_seed())  # base_seed + worker id
        return self.gen

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i] + 0.05 * torch.randn(6, generator=self._gen()), self.y[i]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"gen": self._gen().get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._gen().set_state(state["gen"].clone())


class Progress(tr.Callback):
    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_step_end(self, ctx: tr.RunContext) -> None:
        with open(self.path, "a") as f:
            f.write(f"{ctx.global_step}\n")


def main() -> None:
    run_dir, kind, workers, shuffle = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
    epochs = int(sys.argv[5]) if len(sys.argv) > 5 else 3
    async_save = sys.argv[6:] == ["async"]  # background saves (async_save=True)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    if kind == "stateful":
        from torchdata.stateful_dataloader import StatefulDataLoader
        loader: DataLoader = StatefulDataLoader(StatefulNoisy(), batch_size=8, shuffle=shuffle, num_workers=workers)
    else:
        loader = DataLoader(Noisy(), batch_size=8, shuffle=shuffle, num_workers=workers)
    valid = DataLoader(Noisy(32), batch_size=16)
    cfg = tr.CheckpointConfig(save_checkpoint_steps=2, keep_checkpoint_max=3, async_save=async_save)
    model = tr.Model(net, nn.CrossEntropyLoss(), opt, {"acc", "loss"})
    callbacks = [tr.ModelCheckpoint("net", run_dir, cfg), Progress(os.path.join(run_dir, "progress"))]
    summary = model.fit(epochs, loader, valid, callbacks=callbacks, resume="auto")
    if summary["finished"]:
        mgr = tr.CheckpointManager(run_dir, model=net, optimizer=opt, prefix="final", keep=None)
        tr.save_checkpoint({**net.state_dict(), "optimizer": opt.state_dict(),
                            "rng": torch.get_rng_state()}, os.path.join(run_dir, "final.ckpt"))
        del mgr
    print(f"summary {summary['global_step']} {summary['epoch']} {summary['finished']}", flush=True)


if __name__ == "__main__":
    main()
