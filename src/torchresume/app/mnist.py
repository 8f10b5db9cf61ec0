"""MNIST: read the idx files (gzip or raw, magic numbers and sizes checked) and the seed's
preprocessing, applied to each batch as it is drawn (a run of a few steps does not pay for
resizing 60,000 images at its start, nor hold them as 245 MB of float32)."""

from __future__ import annotations

import functools
import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from torchresume.data.dataset import ArrayDataset
from torchresume.errors import DataError

FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
_MAGIC = {"images": 0x00000803, "labels": 0x00000801}


def default_mnist_dir() -> str:
    """The MNIST copy shipped inside the package (app/mnist_data), or $TORCHRESUME_MNIST."""
    env = os.environ.get("TORCHRESUME_MNIST")
    if env:
        return env
    return str(Path(__file__).resolve().parent / "mnist_data")


def _find(directory: str, base: str) -> str:
    for sub in ("", "train", "test"):
        for name in (base, base + ".gz"):
            path = os.path.join(directory, sub, name)
            if os.path.exists(path):
                return path
    raise DataError(f"{directory}: MNIST file {base}[.gz] not found (looked in ./, train/, test/); "
                    "point --data-url at a directory holding the four idx files")


def _read_idx(path: str, what: str) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    if len(data) < 8:
        raise DataError(f"{path}: truncated idx file ({len(data)} bytes)")
    magic, count = struct.unpack(">II", data[:8])
    if magic != _MAGIC[what]:
        raise DataError(f"{path}: bad magic 0x{magic:08x}, expected 0x{_MAGIC[what]:08x} "
                        f"for MNIST {what}")
    shape: tuple[int, ...]
    if what == "labels":
        body, shape = data[8:], (count,)
    else:
        rows, cols = struct.unpack(">II", data[8:16])
        body, shape = data[16:], (count, rows, cols)
    expected = int(np.prod(shape))
    if len(body) != expected:
        raise DataError(f"{path}: holds {len(body)} data bytes, header says {expected}; "
                        "the file is truncated or damaged")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def read_mnist(directory: str, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N,28,28], labels uint8 [N]) of one split."""
    images = _read_idx(_find(directory, FILES[(split, "images")]), "images")
    labels = _read_idx(_find(directory, FILES[(split, "labels")]), "labels")
    if len(images) != len(labels):
        raise DataError(f"{directory}: {len(images)} {split} images but {len(labels)} labels")
    return images, labels


MEAN, STD = 0.1307, 0.3081


def preprocess(images: np.ndarray | torch.Tensor, resize: int = 32) -> torch.Tensor:
    """uint8 [N,28,28] -> float32 [N,1,32,32]: bilinear resize, then (x/255 - mean) / std.

    Per image: a batch gives bitwise the values the whole array would (tests/app/test_mnist.py)."""
    x = (torch.from_numpy(images.copy()) if isinstance(images, np.ndarray) else images).unsqueeze(1).float()
    if resize != x.shape[-1]:
        x = F.interpolate(x, size=(resize, resize), mode="bilinear", align_corners=False)
    return x.mul_(1.0 / (255.0 * STD)).add_(-MEAN / STD)


def create_dataset(data_dir: str, training: bool = True, batch_size: int = 32, *,
                   resize: int = 32, seed: int = 0, shuffle: bool | None = None,
                   steps_per_epoch: int | None = None) -> ArrayDataset:
    """The seed's create_dataset: resize, rescale/normalise, CHW, shuffle, batch, drop remainder."""
    from torchresume.app.mnist_download import fetch_mnist
    images, labels = read_mnist(fetch_mnist(data_dir), "train" if training else "test")
    return ArrayDataset(torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)),
                        batch_size, shuffle=training if shuffle is None else shuffle, seed=seed,
                        drop_remainder=True, steps_per_epoch=steps_per_epoch,
                        transform=functools.partial(preprocess, resize=resize))
