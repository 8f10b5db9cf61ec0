"""Epoch time of Model.train vs a hand-written PyTorch loop: same LeNet5, data, batch size.

Run: .venv/bin/python benchmarks/epoch_time.py [--epochs 1] [--repeats 3]

Both run on the same preprocessed MNIST tensors, in the same process, in
alternation (hand, harness, hand, harness, ...), each from the same initial
weights; medians are compared.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from torchresume.data import create_dataset, default_mnist_dir
from torchresume.models import LeNet5
from torchresume.train import Model


def hand_loop(net: nn.Module, opt: torch.optim.Optimizer, ds, epochs: int) -> None:  # type: ignore[no-untyped-def]
    loss_fn = nn.CrossEntropyLoss()
    net.train()
    for _ in range(epochs):
        for x, y in ds:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ds = create_dataset(default_mnist_dir(), True, 32)
    torch.manual_seed(0)
    init = LeNet5().state_dict()
    times: dict[str, list[float]] = {"hand-written loop": [], "Model.train": []}
    for _ in range(args.repeats):
        for name in times:
            net = LeNet5()
            net.load_state_dict(init)
            opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
            ds.sampler.set_epoch(0)
            start = time.perf_counter()
            if name == "Model.train":
                Model(net, nn.CrossEntropyLoss(), opt, device="cpu").train(args.epochs, ds)
            else:
                hand_loop(net, opt, ds, args.epochs)
            times[name].append((time.perf_counter() - start) / args.epochs)
    hand, harness = (statistics.median(v) for v in times.values())
    print(f"steps per epoch: {len(ds)}, batch 32, threads {torch.get_num_threads()}")
    for name, values in times.items():
        print(f"{name:<18} median {statistics.median(values):.2f} s/epoch  runs {[round(v, 2) for v in values]}")
    print(f"Model.train / hand loop = {harness / hand:.3f}")


if __name__ == "__main__":
    main()
