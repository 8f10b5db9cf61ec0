"""DistributedArrayDataset: this rank's share of an in-memory dataset, in world-size-free order.

``shard(dataset, rank, world_size)`` turns an ``ArrayDataset`` built with the
*global* batch size into this rank's view: the same steps per epoch, each step
this rank's slice of the global batch (see ``distributed_sampler``). Its state
is the sampler's, so it resumes at any world size.
"""

from __future__ import annotations

import torch

from torchresume.data.dataset import ArrayDataset, Transform
from torchresume.data.distributed_sampler import DistributedResumableSampler


class DistributedArrayDataset(ArrayDataset):
    """Batches of (images, labels) for one rank; ``len`` is the global steps per epoch.

    Everything but the sampler is ArrayDataset's; evaluation (``ordered_batches``) reads
    whole global batches on each rank.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, global_batch_size: int, *,
                 rank: int, world_size: int, shuffle: bool = True, seed: int = 0,
                 steps_per_epoch: int | None = None, transform: Transform | None = None) -> None:
        sampler = DistributedResumableSampler(len(images), global_batch_size, rank=rank,
                                              world_size=world_size, shuffle=shuffle, seed=seed)
        self._hold(images, labels, sampler, global_batch_size, steps_per_epoch, transform)


def shard(dataset: ArrayDataset, rank: int, world_size: int) -> DistributedArrayDataset:
    """This rank's view of ``dataset``; its batch size is taken as the global batch size."""
    sampler = dataset.sampler
    return DistributedArrayDataset(dataset.images, dataset.labels, sampler.batch_size, rank=rank,
                                   world_size=world_size, shuffle=sampler.shuffle, seed=sampler.seed,
                                   steps_per_epoch=dataset.steps_per_epoch, transform=dataset.transform)


__all__ = ["DistributedArrayDataset", "shard"]
