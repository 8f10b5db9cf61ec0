"""A batch sampler whose position can be saved and restored exactly.

The order of epoch ``e`` is a permutation drawn from a generator seeded with
``seed + e``, so restoring (seed, epoch, batches consumed) continues at the
next batch without replaying the data or touching the global RNG.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch


class ResumableBatchSampler:
    """Yields index tensors of ``batch_size``; ``state_dict`` records the position."""

    def __init__(self, length: int, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 drop_remainder: bool = True) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.length, self.batch_size = length, batch_size
        self.shuffle, self.seed, self.drop_remainder = shuffle, seed, drop_remainder
        self.epoch = 0
        self.consumed = 0  # batches of ``epoch`` already handed out

    def __len__(self) -> int:
        full, rest = divmod(self.length, self.batch_size)
        return full if self.drop_remainder or rest == 0 else full + 1

    def order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.length)
        gen = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.length, generator=gen)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self.iterate(len(self))

    def iterate(self, limit: int) -> Iterator[torch.Tensor]:
        """The rest of the current epoch (``limit`` batches in all); then the next epoch begins."""
        order = self.order(self.epoch)
        while self.consumed < limit:
            start = self.consumed * self.batch_size
            self.consumed += 1
            yield order[start:start + self.batch_size]
        self.epoch += 1
        self.consumed = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.consumed = epoch, 0

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "epoch": self.epoch, "consumed": self.consumed,
                "length": self.length, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state["length"], state["batch_size"]) != (self.length, self.batch_size):
            raise ValueError(f"sampler state is for {state['length']} samples in batches of "
                             f"{state['batch_size']}, this data has {self.length} in batches of "
                             f"{self.batch_size}; resume with the same data and batch_size")
        self.seed, self.epoch, self.consumed = state["seed"], state["epoch"], state["consumed"]
