"""Read MNIST's idx files (gzip or raw), checking magic numbers and sizes."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from torchresume.errors import TorchResumeError

FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
_MAGIC = {"images": 0x00000803, "labels": 0x00000801}


class DataError(TorchResumeError, ValueError):
    """The data set is missing or malformed."""


def default_mnist_dir() -> str:
    """The MNIST copy shipped in the repository (data/mnist), or $TORCHRESUME_MNIST."""
    env = os.environ.get("TORCHRESUME_MNIST")
    if env:
        return env
    return str(Path(__file__).resolve().parents[3] / "data" / "mnist")


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
