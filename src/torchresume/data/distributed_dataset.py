"""DistributedArrayDataset: this rank's share of an in-memory dataset, in world-size-free order.

``shard(dataset, rank, world_size)`` turns an ``ArrayDataset`` built with the
*global* batch size into this rank's view: the same steps per epoch, each step
this rank's slice of the global batch (see ``distributed_sampler``). Its state
is the sampler's, so it resumes at any world size.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from torchresume.data.dataset import ArrayDataset
from torchresume.data.distributed_sampler import DistributedResumableSampler


class DistributedArrayDataset:
    """Batches of (images, labels) for one rank; ``len`` is the global steps per epoch."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, global_batch_size: int, *,
                 rank: int, world_size: int, shuffle: bool = True, seed: int = 0,
                 steps_per_epoch: int | None = None) -> None:
        self.images, self.labels = images, labels
        self.sampler = DistributedResumableSampler(len(images), global_batch_size, rank=rank,
                                                   world_size=world_size, shuffle=shuffle, seed=seed)
        self.steps_per_epoch = min(steps_per_epoch or len(self.sampler), len(self.sampler))

    def __len__(self) -> int:
        return self.steps_per_epoch

    def get_dataset_size(self) -> int:
        return len(self)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for idx in self.sampler.iterate(self.steps_per_epoch):
            yield self.images[idx], self.labels[idx]

    def ordered_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every batch in file order, as ArrayDataset gives them (evaluation runs on each rank)."""
        size = self.sampler.global_batch_size
        for i in range(len(self)):
            yield self.images[i * size:(i + 1) * size], self.labels[i * size:(i + 1) * size]

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)


def shard(dataset: ArrayDataset, rank: int, world_size: int) -> DistributedArrayDataset:
    """This rank's view of ``dataset``; its batch size is taken as the global batch size."""
    sampler = dataset.sampler
    return DistributedArrayDataset(dataset.images, dataset.labels, sampler.batch_size, rank=rank,
                                   world_size=world_size, shuffle=sampler.shuffle, seed=sampler.seed,
                                   steps_per_epoch=dataset.steps_per_epoch)


__all__ = ["DistributedArrayDataset", "shard"]
