"""MNIST from a URL: download once into a local cache, verified by size and md5, then reuse."""

from __future__ import annotations

import hashlib
import os

from torchresume.errors import DataError
from torchresume.storage import LocalStorage, is_remote

# The canonical files (app/mnist_data/README.md): gzip sizes and md5s, raw sizes.
KNOWN_GZ = {
    "train-images-idx3-ubyte": (9912422, "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train-labels-idx1-ubyte": (28881, "d53e105ee54ea40749a09fcbcd1e9432"),
    "t10k-images-idx3-ubyte": (1648877, "9fb629c4189551a2d022fa330f9573f3"),
    "t10k-labels-idx1-ubyte": (4542, "ec29112dd5afa0611ce80d1b7f02629c"),
}
KNOWN_RAW = {"train-images-idx3-ubyte": 47040016, "train-labels-idx1-ubyte": 60008,
             "t10k-images-idx3-ubyte": 7840016, "t10k-labels-idx1-ubyte": 10008}


def cache_dir(url: str) -> str:
    root = os.environ.get("TORCHRESUME_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                               "torchresume")
    return os.path.join(root, "data", hashlib.sha1(url.encode()).hexdigest()[:16])


def _valid(name: str, data: bytes) -> bool:
    base = name.removesuffix(".gz")
    if name.endswith(".gz"):
        size, md5 = KNOWN_GZ[base]
        return len(data) == size and hashlib.md5(data).hexdigest() == md5
    return len(data) == KNOWN_RAW[base]


def fetch_mnist(url: str) -> str:
    """A local directory holding the four MNIST files from ``url`` (downloaded once)."""
    if not is_remote(url):
        return url
    from torchresume.transfer import _walk, read_bytes
    target = cache_dir(url)
    available = _walk(url)
    for base in KNOWN_RAW:  # the four canonical file names
        candidates = [rel for rel in available if rel.rsplit("/", 1)[-1] in (base, base + ".gz")]
        if not candidates:
            raise DataError(f"{url}: MNIST file {base}[.gz] not found under it")
        rel = sorted(candidates, key=lambda r: not r.endswith(".gz"))[0]
        name = rel.rsplit("/", 1)[-1]
        local = os.path.join(target, name)
        if os.path.exists(local):
            with open(local, "rb") as f:
                if _valid(name, f.read()):
                    continue
        data = read_bytes(url.rstrip("/") + "/" + rel)
        if not _valid(name, data):
            raise DataError(f"{url}/{rel}: size or md5 does not match the canonical MNIST file; "
                            "the object is damaged or not MNIST")
        LocalStorage().write_atomic(local, [data], read_only=False)
        print(f"torchresume: cached {url.rstrip('/')}/{rel} ({len(data)} bytes) in {target}", flush=True)
    return target
