"""Checkpoint names: ``{prefix}-{epoch}_{step}.ckpt`` (``_breakpoint`` before the suffix for
exception saves), their parsing, the prefix rules and MindSpore's ``prefix_N`` for a fresh run.

The one place names are made and read: both managers, the catalog, retention and the
training callbacks go through it. A sharded checkpoint is a directory with the same name.
"""

from __future__ import annotations

import re

from torchresume.errors import CheckpointConfigError
from torchresume.files.directory import is_committed
from torchresume.storage import resolve

NAME = re.compile(r"^(?P<prefix>.+)-(?P<epoch>\d+)_(?P<step>\d+)(?P<bp>_breakpoint)?\.ckpt$")


def checkpoint_name(prefix: str, epoch: int, step: int, breakpoint: bool = False) -> str:
    """The file (or directory) name of ``prefix``'s checkpoint at ``epoch``/``step``."""
    return f"{prefix}-{epoch}_{step}{'_breakpoint' if breakpoint else ''}.ckpt"


def parse_name(name: str) -> tuple[str, int, int, bool] | None:
    """(prefix, epoch, step, breakpoint) of a checkpoint name; None for any other name."""
    m = NAME.match(name)
    if not m:
        return None
    return m["prefix"], int(m["epoch"]), int(m["step"]), bool(m["bp"])


BEST = "-best"


def best_prefix(prefix: str) -> str:
    """The family of a run's best checkpoints (``monitor=``): ``{prefix}-best``."""
    return prefix + BEST


def check_prefix(prefix: object) -> str:
    """A prefix is a non-empty str without '/' (a path) or '-' (the epoch separator); a run's
    best family (``best_prefix``) is the one name with a '-'."""
    base = prefix[: -len(BEST)] if isinstance(prefix, str) and prefix.endswith(BEST) else prefix
    if not isinstance(prefix, str) or not isinstance(base, str) or not base or "/" in base or "-" in base:
        raise CheckpointConfigError(f"prefix must be a non-empty str without '/' or '-', got {prefix!r}")
    return prefix


def unique_prefix(directory: str, prefix: str) -> str:
    """MindSpore's rule: a fresh run into a directory that has ``prefix`` checkpoints gets ``prefix_N``.

    Only committed checkpoints take a prefix: a run killed before its first commit leaves at most
    its graph file, and its restart continues under the same prefix (not ``prefix_1``, which a
    second early kill would turn into an ambiguous directory).
    """
    storage, where = resolve(directory)
    taken = -1
    for info in storage.list(where):
        if info.is_dir and not is_committed(info.path):
            continue  # a directory is a checkpoint only once its manifest is committed
        parsed = parse_name(info.name)
        if parsed is None:
            continue
        name_prefix = parsed[0]
        if name_prefix == prefix:
            taken = max(taken, 0)
        elif name_prefix.startswith(prefix + "_") and name_prefix[len(prefix) + 1:].isdigit():
            taken = max(taken, int(name_prefix[len(prefix) + 1:]))
    return prefix if taken < 0 else f"{prefix}_{taken + 1}"


__all__ = ["BEST", "NAME", "best_prefix", "check_prefix", "checkpoint_name", "parse_name", "unique_prefix"]
