"""Shared fixtures: small models and optimizers with real state."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.bn = nn.BatchNorm1d(8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


@pytest.fixture
def net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet()


@pytest.fixture
def trained(net: TinyNet) -> tuple[TinyNet, torch.optim.Optimizer]:
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(16, 4)).pow(2).mean().backward()
        opt.step()
    return net, opt


@pytest.fixture(autouse=True)
def _local_dirs_in_tmp(tmp_path, monkeypatch) -> None:
    """Staging and cache directories of remote runs go under the test's tmp dir, not ~/.cache."""
    monkeypatch.setenv("TORCHRESUME_STAGING", str(tmp_path / ".staging"))
    monkeypatch.setenv("TORCHRESUME_CACHE", str(tmp_path / ".cache"))
