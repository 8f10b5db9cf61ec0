"""Describe, verify and compare checkpoint files without model code.

The command line's inspect, verify, diff and ls stand on these functions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from torchresume.api import read_checkpoint
from torchresume.errors import TorchResumeError
from torchresume.format import reader
from torchresume.state.tree import flat_view
from torchresume.storage import resolve

CHECKPOINT_SUFFIXES = (".ckpt", ".safetensors", ".pt", ".pth", ".bin")


@dataclass
class Verdict:
    """The outcome of verifying one file."""

    path: str
    valid: bool
    reason: str = ""


@dataclass
class Description:
    """What ``inspect`` reports about one file."""

    path: str
    size: int
    format: str
    kind: str = ""
    encrypted: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    append: dict[str, Any] = field(default_factory=dict)
    tensors: list[dict[str, Any]] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def describe(path: str) -> Description:
    """Header-level description; reads only the header of native/safetensors files."""
    storage, where = resolve(path)
    f, size = storage.open_header(where)
    with f:
        fmt, header, extra = reader.read_header(f, size, path)
    desc = Description(path, size, fmt, encrypted=bool(extra.get("encrypted")))
    if header is not None:
        desc.kind = header.kind
        desc.tensors = [{"name": e.name, "dtype": str(e.dtype).replace("torch.", ""),
                         "shape": e.shape, "bytes": e.end - e.begin} for e in header.entries]
        if header.meta:
            desc.info = dict(header.meta.get("info", {}))
            desc.append = dict(header.meta.get("append", {}))
            desc.values = _scalars(header.meta.get("skeleton"))
        return desc
    if fmt == "encrypted":
        desc.kind = "encrypted"
        desc.info = {"mode": extra["mode"], "plain_size": extra["plain_size"]}
        return desc
    ckpt = read_checkpoint(path)  # torch files have no separate header
    desc.kind = ckpt.kind
    flat = flat_view(ckpt.tree)
    desc.tensors = [{"name": k, "dtype": str(v.dtype).replace("torch.", ""),
                     "shape": list(v.shape), "bytes": v.numel() * v.element_size()}
                    for k, v in flat.items() if isinstance(v, torch.Tensor)]
    desc.values = {k: v for k, v in flat.items() if not isinstance(v, torch.Tensor)}
    return desc


def _scalars(skeleton: Any) -> dict[str, Any]:
    """Non-tensor leaves of a skeleton, under their dotted names (no tensor data needed)."""
    from torchresume.state.tree import unflatten

    class _Placeholder(dict[str, torch.Tensor]):
        def __missing__(self, key: str) -> torch.Tensor:
            return torch.empty(0)

    try:
        tree = unflatten(skeleton, _Placeholder())
    except (ValueError, KeyError, TypeError):
        return {}
    return {k: v for k, v in flat_view(tree).items() if not isinstance(v, torch.Tensor)}


def verify(path: str, dec_key: bytes | None = None) -> Verdict:
    """Read the whole file and check every checksum; never raises for a bad file."""
    try:
        read_checkpoint(path, dec_key=dec_key)
    except TorchResumeError as exc:
        return Verdict(path, False, str(exc))
    except (OSError, ValueError) as exc:
        return Verdict(path, False, f"{path}: {exc}")
    return Verdict(path, True)


def checkpoint_files(directory: str) -> list[str]:
    storage, where = resolve(directory)
    return sorted(i.path for i in storage.list(where) if i.name.endswith(CHECKPOINT_SUFFIXES))


def is_directory(path: str) -> bool:
    storage, where = resolve(path)
    return storage.isdir(where)


@dataclass
class TensorChange:
    name: str
    change: str
    detail: str = ""
    max_abs_diff: float | None = None


def diff(a: str, b: str) -> list[TensorChange]:
    """Tensors and values added, removed or changed from ``a`` to ``b``."""
    fa, fb = flat_view(read_checkpoint(a).tree), flat_view(read_checkpoint(b).tree)
    out = [TensorChange(k, "removed") for k in fa if k not in fb]
    out += [TensorChange(k, "added") for k in fb if k not in fa]
    for k in fa:
        if k in fb:
            change = _compare(k, fa[k], fb[k])
            if change:
                out.append(change)
    return sorted(out, key=lambda c: c.name)


def _as_tensor(value: Any) -> Any:
    """numpy arrays (RNG states, user arrays) compare as tensors."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    return value


def _same_value(x: Any, y: Any) -> bool:
    """Equality of non-tensor leaves; NaN equals NaN (a stored NaN is the same value)."""
    if type(x) is not type(y):
        return False
    if isinstance(x, float) and math.isnan(x) and math.isnan(y):
        return True
    return bool(x == y)


def _compare(name: str, x: Any, y: Any) -> TensorChange | None:
    x, y = _as_tensor(x), _as_tensor(y)
    if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
        if x.shape != y.shape or x.dtype != y.dtype:
            return TensorChange(name, "changed", f"{x.dtype}{list(x.shape)} -> "
                                f"{y.dtype}{list(y.shape)}")
        if torch.equal(x, y) or (x.is_floating_point() and torch.equal(x.isnan(), y.isnan())
                                 and torch.equal(x.nan_to_num(), y.nan_to_num())):
            return None
        delta = (x.double() - y.double()).abs().nan_to_num(nan=math.inf).max().item() if x.numel() else 0.0
        return TensorChange(name, "changed", "values", delta)
    if not _same_value(x, y):
        return TensorChange(name, "changed", f"{_brief(x)} -> {_brief(y)}")
    return None


def _brief(value: Any, limit: int = 60) -> str:
    """repr, shortened: a generator's 625-number state is not worth a screen."""
    text = repr(value)
    if len(text) <= limit:
        return text
    if isinstance(value, (list, tuple)):
        return f"<{type(value).__name__} of {len(value)} items>"
    return text[:limit - 3] + "..."


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
