"""Small, fast training setups for harness tests."""

from __future__ import annotations

import torch
from torch import nn

from torchresume.data import ArrayDataset
from torchresume.train import Model


def toy_data(n: int = 64, batch: int = 8, seed: int = 0) -> ArrayDataset:
    g = torch.Generator().manual_seed(123)
    x = torch.randn(n, 4, generator=g)
    y = (x.sum(1) > 0).long()
    return ArrayDataset(x, y, batch, seed=seed)


def toy_model(lr: float = 0.1) -> Model:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 2))
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    return Model(net, nn.CrossEntropyLoss(), opt, {"acc", "loss"}, device="cpu")
