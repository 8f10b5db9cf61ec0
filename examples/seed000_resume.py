"""Seed 000 (断点续训) ported to torchresume: a functional training loop that survives exceptions.

Run it; pass --fail-at-epoch 4 to simulate the crash of the seed, then run it again
without the flag and it continues from the breakpoint.
"""

import argparse

import torch
from torch import nn

from torchresume import CheckpointManager, save_on_exception
from torchresume.app.models import Network

parser = argparse.ArgumentParser()
parser.add_argument("--dir", default="seed000-ckpt")
parser.add_argument("--fail-at-epoch", type=int, default=0)
parser.add_argument("--epochs", type=int, default=8)
args = parser.parse_args()

torch.manual_seed(0)
model = Network()
loss_fn = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), 1e-2)
manager = CheckpointManager(args.dir, model=model, optimizer=optimizer, prefix="net")


def train_step(data: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    optimizer.zero_grad()
    loss = loss_fn(model(data), label)
    loss.backward()
    optimizer.step()
    return loss


@save_on_exception(manager)
def train(model: nn.Module, *, epoch: int) -> None:
    model.train()
    for _ in range(5):
        data, label = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
        loss = train_step(data, label)
    if epoch == args.fail_at_epoch:
        raise RuntimeError(f"simulated failure in epoch {epoch}")
    print(f"epoch: {epoch}, loss: {loss.item():>7f}")


info = manager.restore_latest()  # resume = True: the newest valid checkpoint, if any
if info is None:
    initepoch = 1
    print("====>Train start.")
else:
    initepoch = info["epoch"] + (0 if info["breakpoint"] else 1)
    print(f"====>Network params and optimizer state of epoch {info['epoch']} loaded from {info['path']}.")

for epoch in range(initepoch, args.epochs):
    train(model, epoch=epoch)
    manager.save(epoch, 0)
