"""app/mnist.py: the seed's preprocessing, applied per batch as drawn, gives the whole array's values."""

from __future__ import annotations

import itertools

import torch

from torchresume.app.mnist import create_dataset, default_mnist_dir, preprocess, read_mnist
from torchresume.data.distributed_dataset import shard


def test_batches_drawn_equal_the_whole_array_preprocessed() -> None:
    images, labels = read_mnist(default_mnist_dir(), "test")
    whole = preprocess(images)  # the seed's create_dataset: every image resized up front
    ds = create_dataset(default_mnist_dir(), False, 32, seed=3, shuffle=True)
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (10000, 28, 28)  # 7.8 MB, not 41 MB
    before = ds.sampler.state_dict()
    order = list(ds.sampler.iterate(20))  # the positions the next epoch draws
    ds.sampler.load_state_dict(before)
    for (x, y), idx in zip(itertools.islice(ds, 20), order, strict=True):
        assert x.shape == (32, 1, 32, 32) and torch.equal(x, whole[idx]) and torch.equal(y, torch.from_numpy(
            labels[idx].astype("int64")))
    x, y = ds.first(8)
    assert torch.equal(x, whole[:8]) and y.tolist() == labels[:8].tolist()


def test_a_rank_view_keeps_the_transform() -> None:
    ds = create_dataset(default_mnist_dir(), False, 32, shuffle=False)
    x, _ = next(iter(shard(ds, 1, 2)))
    assert x.dtype == torch.float32 and x.shape == (16, 1, 32, 32)
