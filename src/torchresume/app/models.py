"""The seeds' networks: LeNet5 (seed 003) and the MLP of seed 000."""

from __future__ import annotations

import torch
from torch import nn


class LeNet5(nn.Module):
    """LeNet5 exactly as seed 003 defines it (no activation between the dense layers).

    MindSpore's ``nn.Conv2d`` has no bias unless ``has_bias=True``, so the seed's
    convolutions have none: the state names and shapes equal the seed's .ckpt.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, stride=1, padding=0, bias=False)
        self.conv2 = nn.Conv2d(6, 16, 5, stride=1, padding=0, bias=False)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(400, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        return self.fc3(self.fc2(self.fc1(self.flatten(x))))


class Network(nn.Module):
    """Seed 000's MLP: 784 -> 512 -> 512 -> 10 with ReLU."""

    def __init__(self, in_features: int = 28 * 28) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.dense_relu_sequential = nn.Sequential(
            nn.Linear(in_features, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_relu_sequential(self.flatten(x))


MODELS = {"lenet5": LeNet5, "mlp": Network}

__all__ = ["MODELS", "LeNet5", "Network"]
