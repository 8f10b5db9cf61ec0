"""In-memory datasets: the seed's MNIST preprocessing, done once and vectorised."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from torchresume.data.mnist import read_mnist
from torchresume.data.sampler import ResumableBatchSampler

MEAN, STD = 0.1307, 0.3081


class ArrayDataset:
    """Batches of (images, labels) from tensors in memory, in resumable order."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 32, *,
                 shuffle: bool = True, seed: int = 0, drop_remainder: bool = True,
                 steps_per_epoch: int | None = None) -> None:
        self.images, self.labels = images, labels
        self.sampler = ResumableBatchSampler(len(images), batch_size, shuffle=shuffle, seed=seed,
                                             drop_remainder=drop_remainder)
        self.steps_per_epoch = min(steps_per_epoch or len(self.sampler), len(self.sampler))

    def __len__(self) -> int:
        return self.steps_per_epoch

    def get_dataset_size(self) -> int:
        """MindSpore's name for the number of batches per epoch."""
        return len(self)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The rest of the sampler's current epoch (all of it for a fresh epoch)."""
        for idx in self.sampler.iterate(self.steps_per_epoch):
            yield self.images[idx], self.labels[idx]

    def ordered_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every batch in file order, leaving the training position untouched (for evaluation)."""
        size = self.sampler.batch_size
        for i in range(len(self)):
            yield self.images[i * size:(i + 1) * size], self.labels[i * size:(i + 1) * size]

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)


def preprocess(images: np.ndarray, resize: int = 32) -> torch.Tensor:
    """uint8 [N,28,28] -> float32 [N,1,32,32]: bilinear resize, then (x/255 - mean) / std."""
    x = torch.from_numpy(images.copy()).unsqueeze(1).float()
    if resize != x.shape[-1]:
        x = F.interpolate(x, size=(resize, resize), mode="bilinear", align_corners=False)
    return x.mul_(1.0 / (255.0 * STD)).add_(-MEAN / STD)


def create_dataset(data_dir: str, training: bool = True, batch_size: int = 32, *,
                   resize: int = 32, seed: int = 0, shuffle: bool | None = None,
                   steps_per_epoch: int | None = None) -> ArrayDataset:
    """The seed's create_dataset: resize, rescale/normalise, CHW, shuffle, batch, drop remainder."""
    from torchresume.data.remote import fetch_mnist
    images, labels = read_mnist(fetch_mnist(data_dir), "train" if training else "test")
    return ArrayDataset(preprocess(images, resize), torch.from_numpy(labels.astype(np.int64)),
                        batch_size, shuffle=training if shuffle is None else shuffle, seed=seed,
                        drop_remainder=True, steps_per_epoch=steps_per_epoch)
