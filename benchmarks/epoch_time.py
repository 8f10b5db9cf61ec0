"""Epoch time of Model.train vs a hand-written PyTorch loop: same LeNet5, data, batch size.

Run: .venv/bin/python benchmarks/epoch_time.py [--rounds 20] [--chunk 200]

This machine is shared and noisy, so the two are timed in short alternating
chunks (``chunk`` steps of the hand loop, then ``chunk`` steps of Model.train,
``rounds`` times, the order swapped every round) on the same preprocessed
MNIST tensors, each chunk from the same initial weights; the per-step medians
are compared and scaled to a full epoch (1875 steps). One full epoch of each
is also timed once, for reference.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from torchresume.app.mnist import create_dataset, default_mnist_dir
from torchresume.app.models import LeNet5
from torchresume.data import ArrayDataset
from torchresume.train import Model


def hand_loop(net: nn.Module, opt: torch.optim.Optimizer, ds: ArrayDataset) -> None:
    loss_fn = nn.CrossEntropyLoss()
    net.train()
    for x, y in ds:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()


def timed_chunk(kind: str, ds: ArrayDataset) -> float:
    """Seconds per step of one pass over ``ds`` from the same initial weights and data order."""
    torch.manual_seed(0)
    net = LeNet5()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    ds.sampler.set_epoch(0)
    start = time.perf_counter()
    if kind == "Model.train":
        Model(net, nn.CrossEntropyLoss(), opt, device="cpu").train(1, ds)
    else:
        hand_loop(net, opt, ds)
    return (time.perf_counter() - start) / len(ds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--chunk", type=int, default=200)
    parser.add_argument("--no-full", action="store_true", help="skip the one full epoch of each (before_after.py)")
    args = parser.parse_args()
    kinds = ("hand-written loop", "Model.train")
    # The data is decoded once and shared: fresh 245 MB buffers per chunk would measure
    # this machine's slow first-touch page faults instead of the training loops.
    chunk = create_dataset(default_mnist_dir(), True, 32, steps_per_epoch=args.chunk)
    epoch = create_dataset(default_mnist_dir(), True, 32)
    per_step: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(args.rounds):
        for kind in kinds if r % 2 == 0 else kinds[::-1]:  # ABBA order cancels drift
            per_step[kind].append(timed_chunk(kind, chunk))
    full = {kind: 0.0 if args.no_full else timed_chunk(kind, epoch) * len(epoch) for kind in kinds}
    hand, harness = (statistics.median(per_step[k]) for k in kinds)
    print(f"LeNet5, batch 32, {torch.get_num_threads()} threads, {args.rounds} alternating chunks "
          f"of {args.chunk} steps")
    for kind in kinds:
        med = statistics.median(per_step[kind])
        print(f"{kind:<18} median {1000 * med:.3f} ms/step = {1875 * med:.2f} s/epoch "
              f"(one full epoch: {full[kind]:.2f} s)")
    print(f"Model.train / hand loop = {harness / hand:.3f}")


if __name__ == "__main__":
    main()
