"""A resumable distributed sampler whose epoch order does not depend on the world size.

The order of epoch ``e`` is one global permutation of ``range(length)`` drawn
from ``seed + e`` (the same order a single process would use). A step consumes
the next *global batch* of that order, ``global_batch_size`` samples, and rank
``r`` of ``W`` takes the ``r``-th contiguous ``global_batch_size / W`` of it.
The position is ``(epoch, samples consumed globally)``, stored as ``consumed``
global batches (samples = consumed x global batch): identical on every rank
at a step boundary and meaningful at any world size, so a run stopped at 4
ranks and resumed at 2 continues with the very next unseen sample; across the
old and new world sizes every index of the epoch is seen exactly once.

The last partial global batch of an epoch (``length % global_batch_size``
samples) is dropped, as ``DistributedSampler(drop_last=True)`` with a
dropping batch sampler does: split over the ranks it would give them unequal
batches (weighting DDP's gradient average unevenly) or none at all. Each epoch
reshuffles, so a different tail is dropped each time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from torchresume.errors import DataError


def check_split(global_batch_size: int, world_size: int) -> int:
    """The per-rank batch size; a typed error when the global batch does not split evenly."""
    if global_batch_size <= 0:
        raise DataError(f"the global batch size must be positive, got {global_batch_size}")
    if world_size <= 0:
        raise DataError(f"the world size must be positive, got {world_size}")
    per_rank, rest = divmod(global_batch_size, world_size)
    if rest or not per_rank:
        raise DataError(f"the global batch size {global_batch_size} does not split evenly over "
                        f"{world_size} ranks; use a batch size that is a multiple of the world size "
                        f"(e.g. {max(1, global_batch_size // world_size) * world_size})")
    return per_rank


class DistributedResumableSampler:
    """Yields this rank's index tensor per step; ``state_dict`` is world-size free."""

    def __init__(self, length: int, global_batch_size: int, *, rank: int, world_size: int,
                 shuffle: bool = True, seed: int = 0) -> None:
        self.per_rank = check_split(global_batch_size, world_size)
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside a world of {world_size} ranks")
        if length < global_batch_size:
            raise DataError(f"{length} samples do not fill one global batch of {global_batch_size}; "
                            "use a smaller batch size or more data")
        self.length, self.global_batch_size = length, global_batch_size
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.seed = shuffle, seed
        self.epoch = 0
        self.samples = 0  # samples of ``epoch`` consumed by all ranks together

    def __len__(self) -> int:
        """Steps (global batches) per epoch."""
        return self.length // self.global_batch_size

    @property
    def consumed(self) -> int:
        """Global batches of the current epoch already handed out (the step within the epoch)."""
        return self.samples // self.global_batch_size

    @consumed.setter
    def consumed(self, steps: int) -> None:
        self.samples = steps * self.global_batch_size

    def order(self, epoch: int) -> torch.Tensor:
        """The global order of ``epoch``: a function of (seed, epoch, length) only."""
        if not self.shuffle:
            return torch.arange(self.length)
        gen = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.length, generator=gen)

    def rank_slice(self, start: int) -> slice:
        """This rank's part of the global batch that begins at sample ``start``."""
        begin = start + self.rank * self.per_rank
        return slice(begin, begin + self.per_rank)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self.iterate(len(self))

    def iterate(self, limit: int) -> Iterator[torch.Tensor]:
        """The rest of the current epoch (``limit`` steps in all); then the next epoch begins."""
        order = self.order(self.epoch)
        while self.consumed < limit and self.samples + self.global_batch_size <= self.length:
            part = self.rank_slice(self.samples)
            self.samples += self.global_batch_size
            yield order[part]
        self.epoch += 1
        self.samples = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.samples = epoch, 0

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "epoch": self.epoch, "consumed": self.consumed,
                "length": self.length, "global_batch_size": self.global_batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Position at a saved step boundary; ``consumed`` (global steps) wins over ``samples``."""
        saved = (state.get("length"), state.get("global_batch_size", state.get("batch_size")))
        if saved != (self.length, self.global_batch_size):
            raise DataError(f"the sampler state is for {saved[0]} samples in global batches of "
                            f"{saved[1]}, this run has {self.length} in global batches of "
                            f"{self.global_batch_size}; resume with the same data and batch_size "
                            "(the global batch, whatever the number of ranks)")
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])
        if "consumed" in state:
            self.consumed = int(state["consumed"])
        else:
            self.samples = int(state["samples"])


__all__ = ["DistributedResumableSampler", "check_split"]
