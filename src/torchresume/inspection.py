"""Describe, verify and compare checkpoints without model code.

The command line's inspect, verify, diff and ls stand on these functions;
describe and verify come from the file layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from torchresume.files import CHECKPOINT_SUFFIXES, Description, Verdict, describe, read_checkpoint, verify
from torchresume.state.tree import flat_view
from torchresume.storage import resolve


def checkpoint_files(directory: str) -> list[str]:
    """Checkpoints directly in ``directory``: files by suffix, and committed directory checkpoints."""
    from torchresume.files.directory import is_committed
    storage, where = resolve(directory)
    return sorted(i.path for i in storage.list(where) if i.name.endswith(CHECKPOINT_SUFFIXES)
                  and (not i.is_dir or is_committed(i.path)))


def is_directory(path: str) -> bool:
    storage, where = resolve(path)
    return storage.isdir(where)


@dataclass
class TensorChange:
    name: str
    change: str
    detail: str = ""
    max_abs_diff: float | None = None


def diff(a: str, b: str, *, load: Callable[[str], Any] | None = None) -> list[TensorChange]:
    """Tensors and values added, removed or changed from ``a`` to ``b``.

    ``load``: path -> state tree (default: read_checkpoint, which reads a sharded checkpoint as one file).
    """
    load = load or (lambda p: read_checkpoint(p).tree)
    fa, fb = flat_view(load(a)), flat_view(load(b))
    out = [TensorChange(k, "removed") for k in fa if k not in fb]
    out += [TensorChange(k, "added") for k in fb if k not in fa]
    for k in fa:
        if k in fb:
            change = _compare(k, fa[k], fb[k])
            if change:
                out.append(change)
    return sorted(out, key=lambda c: c.name)


def diff_metadata(a: dict[str, Any], b: dict[str, Any], section: str) -> list[TensorChange]:
    """Header entries (``info``: time, config, steps...; ``append``) added, removed or changed."""
    fa, fb = flat_view(a), flat_view(b)
    out = [TensorChange(f"{section}.{k}", "removed") for k in fa if k not in fb]
    out += [TensorChange(f"{section}.{k}", "added") for k in fb if k not in fa]
    out += [c for c in (_compare(f"{section}.{k}", fa[k], fb[k]) for k in fa if k in fb) if c]
    return sorted(out, key=lambda c: c.name)


# Header entries that say where and how a run ran, not what it computed: two runs of one
# command differ in them (``diff`` ignores them unless asked to compare everything).
RUN_SPECIFIC = ("info.time", "info.prefix", "info.config.train_url", "info.config.data_url",
                "info.config.resume", "info.config.storage_option", "info.config.device",
                "info.config.threads", "info.config.print_every", "info.config.async_save",
                "info.config.overlap", "info.config.write_mb_per_s", "info.config.save_deadline")


def run_specific(change: TensorChange) -> bool:
    """Whether ``change`` is to an entry of RUN_SPECIFIC (or inside one)."""
    return any(change.name == key or change.name.startswith(key + ".") for key in RUN_SPECIFIC)


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


__all__ = ["CHECKPOINT_SUFFIXES", "RUN_SPECIFIC", "Description", "TensorChange", "Verdict", "checkpoint_files",
           "describe", "diff", "human_bytes", "is_directory", "run_specific", "verify"]
