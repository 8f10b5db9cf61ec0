"""ArrayDataset: tensors in memory, batched by a resumable sampler (exact mid-epoch resume)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from torchresume.data.sampler import ResumableBatchSampler

Transform = Callable[[torch.Tensor], torch.Tensor]


class ArrayDataset:
    """Batches of (images, labels) from tensors in memory, in resumable order.

    ``transform``, if given, is applied to each batch of images as it is drawn (a per-sample
    function such as a resize: the same result as on the whole array, paid only for the batches
    a run trains on, and the array stays in its compact form).
    """

    sampler: Any  # ResumableBatchSampler here; DistributedResumableSampler in the per-rank view

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 32, *,
                 shuffle: bool = True, seed: int = 0, drop_remainder: bool = True,
                 steps_per_epoch: int | None = None, transform: Transform | None = None) -> None:
        sampler = ResumableBatchSampler(len(images), batch_size, shuffle=shuffle, seed=seed,
                                        drop_remainder=drop_remainder)
        self._hold(images, labels, sampler, batch_size, steps_per_epoch, transform)

    def _hold(self, images: torch.Tensor, labels: torch.Tensor, sampler: Any, eval_batch: int,
              steps_per_epoch: int | None, transform: Transform | None) -> None:
        self.images, self.labels, self.sampler, self.eval_batch = images, labels, sampler, eval_batch
        self.transform = transform
        self.steps_per_epoch = min(steps_per_epoch or len(sampler), len(sampler))

    def _batch(self, idx: Any) -> tuple[torch.Tensor, torch.Tensor]:
        images = self.images[idx]
        return (images if self.transform is None else self.transform(images)), self.labels[idx]

    def first(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` (images, labels) in file order, transformed (for a prediction grid)."""
        return self._batch(slice(0, n))

    def __len__(self) -> int:
        return self.steps_per_epoch

    def get_dataset_size(self) -> int:
        """MindSpore's name for the number of batches per epoch."""
        return len(self)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The rest of the sampler's current epoch (all of it for a fresh epoch)."""
        for idx in self.sampler.iterate(self.steps_per_epoch):
            yield self._batch(idx)

    def ordered_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every batch in file order, leaving the training position untouched (for evaluation)."""
        size = self.eval_batch
        for i in range(len(self)):
            yield self._batch(slice(i * size, (i + 1) * size))

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)
