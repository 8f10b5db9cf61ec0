"""A torchrun worker for the elastic tests: a tiny model whose forward logs every sample index.

Each sample's first feature is its index, so the network appends the indices
it trains on to ``{log_dir}/rank{rank}-ws{world}.log`` (one line per step).
``--term-at N`` makes rank 0 send itself SIGTERM after global step N: the
ranks agree on a stop, save the same step and exit 143.
"""

from __future__ import annotations

import argparse
import os
import signal

import torch
from torch import nn

from torchresume.data import ArrayDataset
from torchresume.state.rng import make_deterministic
from torchresume.train import CheckpointConfig, LambdaCallback, Model, ModelCheckpoint
from torchresume.train.distributed import end_process


class Logged(nn.Module):
    """Linear regression that writes the indices of each batch it sees."""

    def __init__(self, log_dir: str) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 1)
        self.log_dir = log_dir

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
        with open(os.path.join(self.log_dir, f"rank{rank}-ws{world}.log"), "a") as f:
            f.write(" ".join(str(int(i)) for i in x[:, 0].tolist()) + "\n")
        return self.fc(x)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--samples", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=8, help="the global batch")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--term-at", type=int, default=0)
    args = p.parse_args()
    make_deterministic(0)
    index = torch.arange(args.samples, dtype=torch.float32)
    x = torch.stack([index, torch.sin(index)], dim=1)
    ds = ArrayDataset(x, x[:, 1:] * 2.0, batch_size=args.batch_size, seed=5)
    net = Logged(args.dir)
    model = Model(net, nn.MSELoss(), torch.optim.SGD(net.parameters(), lr=1e-4))
    callbacks = [ModelCheckpoint("el", os.path.join(args.dir, "ckpt"),
                                 CheckpointConfig(save_checkpoint_steps=100, keep_checkpoint_max=2))]
    if args.term_at and os.environ.get("RANK") == "0":
        def term(ctx: object) -> None:
            if getattr(ctx, "global_step", 0) == args.term_at:
                os.kill(os.getpid(), signal.SIGTERM)
        callbacks.append(LambdaCallback(on_train_step_end=term))
    try:
        model.train(args.epochs, ds, callbacks, resume="auto")
    except SystemExit as exc:  # 128 + 15 after the SIGTERM save
        end_process(int(exc.code or 0))
    end_process(0)  # gloo's rare SIGABRT in the interpreter's teardown is not what these tests are about


if __name__ == "__main__":
    main()
