"""The checkpoints in a directory: names, ordering (newest first) and validity.

Names follow MindSpore: ``{prefix}-{epoch}_{step}.ckpt`` with
``_breakpoint`` before the suffix for exception saves. Newest means the highest
saved: the save time recorded in the file's header (the same clock for a local
copy and its upload, and finer than S3's one-second LastModified), else the
file's mtime; ties broken by the global step and the name's (epoch, step).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from torchresume import files
from torchresume.errors import (
    AmbiguousRunError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    DamagedRunError,
    DivergedRunError,
    TorchResumeError,
)
from torchresume.files import CHECKPOINT_SUFFIXES
from torchresume.files import directory as directory_layout
from torchresume.files import sharded as sharded_layout
from torchresume.format.reader import Checkpoint
from torchresume.log import log
from torchresume.naming import parse_name
from torchresume.state.tree import map_tensors
from torchresume.storage import resolve

# Formats torchresume never writes into a run: such a file (a native one stripped of its metadata, a
# torch file) is listed but never resumed from, whatever its name and mtime.
FOREIGN = ("safetensors", "torch-zip", "torch-pickle")


def foreign_reason(path: str, fmt: str, meta: dict[str, Any]) -> str | None:
    """Why a file is not a checkpoint of a run (None if it is): a foreign format, or a MindSpore file
    without the run entry torchresume's training writes (``meta`` is then empty)."""
    if fmt in FOREIGN or (fmt == "mindspore" and not meta):
        return (f"{path}: a plain {fmt} file without torchresume's run metadata; resume and "
                "retention never pick it as a checkpoint of the run (load it by name)")
    return None


@dataclass
class ListedCheckpoint:
    """One checkpoint file and what its name and header say."""

    path: str
    name: str
    size: int
    mtime: float
    prefix: str | None = None
    epoch: int | None = None
    step: int | None = None
    global_step: int | None = None
    breakpoint: bool = False
    valid: bool = True
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    saved_at: float | None = None
    is_dir: bool = False
    finite: bool | None = None  # every weight finite (None: not read, only the header)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def when(self) -> float:
        """When it was saved (the header's record, else the file's mtime), epoch seconds."""
        return self.saved_at if self.saved_at is not None else self.mtime

    def order_key(self) -> tuple[float, int, int, int]:
        """Newest = most recently saved; ties broken by progress."""
        return (self.when, self.global_step if self.global_step is not None else -1,
                self.epoch or 0, self.step or 0)


def delete(entry_or_path: ListedCheckpoint | str) -> None:
    """Delete one checkpoint: a file (marker first on object storage) or a directory (manifest first)."""
    path = entry_or_path.path if isinstance(entry_or_path, ListedCheckpoint) else entry_or_path
    storage, where = resolve(path)
    if storage.isdir(where):
        directory_layout.delete(path)
    else:
        storage.delete(where)


def remove_unfinished(directory: str, prefix: str) -> list[str]:
    """Delete the directories of ``prefix`` that an interrupted save left (parts, no manifest: never
    committed, never resumed from); returns their paths. Only while no save of ``prefix`` can be in
    flight anywhere: the manager calls it once it holds the run lock (rank 0 under torchrun). An empty
    directory is left alone: no save's parts are in it, so nothing of a save is lost by keeping it,
    and what it is for is not ours to guess (a save of that name then says why it cannot write)."""
    storage, where = resolve(directory)
    if not storage.isdir(where):
        return []
    removed = []
    for entry in storage.list(where):
        parsed = parse_name(entry.path.rstrip("/").rsplit("/", 1)[-1])
        if (entry.is_dir and parsed is not None and parsed[0] == prefix and storage.list(entry.path)
                and not storage.exists(storage.join(entry.path, directory_layout.MANIFEST))):  # a damaged one stays
            log.warning("removing %s: an interrupted save's parts (never committed, never resumed from)", entry.path)
            storage.delete(entry.path)
            removed.append(entry.path)
    return removed


def list_checkpoints(directory: str, *, verify: bool = True, prefix: str | None = None, dec_key: bytes | None = None,
                     headers: bool = True, sharded_only: bool = False) -> list[ListedCheckpoint]:
    """Checkpoint files in ``directory``, newest first, each with its validity.

    ``verify``: read each one whole (checksums; ``dec_key`` for encrypted ones) and note
    whether its weights are finite. ``headers=False``: a directory checkpoint's facts come from
    its manifest alone, its parts' headers unread (a sharded checkpoint has parts from every
    rank; a damaged part is then found when it is read, not when it is listed), each manifest
    read once. ``sharded_only``: only sharded (torch.distributed) directory checkpoints.
    """
    storage, where = resolve(directory)
    out = []
    for info in storage.list(where):
        if not info.name.endswith(CHECKPOINT_SUFFIXES) or (sharded_only and not info.is_dir):
            continue
        entry = ListedCheckpoint(info.path, info.name, info.size, info.mtime, is_dir=info.is_dir)
        parsed = parse_name(info.name)
        if parsed:
            entry.prefix, entry.epoch, entry.step, entry.breakpoint = parsed
        if prefix is not None and entry.prefix != prefix:
            continue
        manifest = _committed_manifest(entry) if info.is_dir else None
        if info.is_dir and manifest is None and entry.valid:
            continue  # a directory checkpoint is one only once its manifest is committed
        if sharded_only and entry.valid and not sharded_layout.is_sharded(manifest or {}):
            continue  # (a damaged manifest's entry stays, invalid: a sharded restore passes over it, saying so)
        if entry.valid:
            _read_header_facts(entry, headers, manifest)
        if verify and entry.valid:
            _read_whole(entry, dec_key)
        out.append(entry)
    return sorted(out, key=ListedCheckpoint.order_key, reverse=True)


def runs(entries: list[ListedCheckpoint]) -> dict[str, list[ListedCheckpoint]]:
    """Resumable checkpoints by run prefix (best-model copies excluded), each newest first."""
    out: dict[str, list[ListedCheckpoint]] = {}
    for e in entries:
        if e.prefix is not None and not e.prefix.endswith("-best"):
            out.setdefault(e.prefix, []).append(e)
    return out


def select_run(entries: list[ListedCheckpoint], prefix: str, directory: str) -> list[ListedCheckpoint]:
    """The checkpoints of the run named ``prefix`` (newest first), never another run's.

    A directory holding no ``prefix`` checkpoints but runs started from it with
    ``resume='none'`` (``prefix_1``, ``prefix_2``...) is ambiguous: raises
    AmbiguousRunError naming them and how to pick one.
    """
    by_run = runs(entries)
    if prefix in by_run:
        return by_run[prefix]
    siblings = sorted((p for p in by_run if p.startswith(prefix + "_") and p[len(prefix) + 1:].isdigit()),
                      key=lambda p: int(p[len(prefix) + 1:]))
    if not siblings:
        return []
    listed = ", ".join(f"{p} (newest {by_run[p][0].name})" for p in siblings)
    raise AmbiguousRunError(
        f"{directory} has no checkpoints of run '{prefix}' but has runs {listed}; continue one with "
        f"prefix='{siblings[-1]}' (ModelCheckpoint's prefix), or start a new run with resume='none'")


def _read_whole(entry: ListedCheckpoint, dec_key: bytes | None) -> None:
    try:
        key = dec_key if dec_key is not None and _encrypted(entry.path) else None
        ckpt = files.read_checkpoint(entry.path, dec_key=key)
    except TorchResumeError as exc:
        entry.valid, entry.reason = False, str(exc)
        return
    except (OSError, ValueError) as exc:
        entry.valid, entry.reason = False, f"{entry.path}: {exc}"
        return
    entry.finite = tree_finite(ckpt.tree)


def _encrypted(path: str) -> bool:
    try:
        return files.describe(path).encrypted
    except (TorchResumeError, OSError, ValueError):
        return False


def _committed_manifest(entry: ListedCheckpoint) -> dict[str, Any] | None:
    """The manifest of directory ``entry``; None when it is not committed, or damaged (``entry``
    then marked invalid, with the reason: listed, never resumed from)."""
    try:
        return directory_layout.read_manifest(entry.path)
    except CheckpointNotFoundError:
        return None
    except (TorchResumeError, OSError) as exc:
        entry.valid, entry.reason = False, str(exc) if isinstance(exc, TorchResumeError) else f"{entry.path}: {exc}"
        return None


def _manifest_facts(path: str, doc: dict[str, Any]) -> Any:
    """What ``files.describe`` says of a directory checkpoint that its manifest alone tells: size, info."""
    return files.Description(path, sum(int(p["size"]) for p in doc["parts"]), "torchresume-directory",
                             info=dict(doc.get("info", {})))


def _read_header_facts(entry: ListedCheckpoint, headers: bool = True, manifest: dict[str, Any] | None = None) -> None:
    try:
        if headers or manifest is None:
            desc = files.describe(entry.path)
        else:
            desc = _manifest_facts(entry.path, manifest)
    except (TorchResumeError, OSError, ValueError) as exc:
        entry.valid, entry.reason = False, str(exc)
        return
    foreign = foreign_reason(entry.path, desc.format, desc.info)
    if foreign is not None:  # no run metadata: resume would take it by its name and mtime alone
        entry.valid, entry.reason = False, foreign
        return
    if entry.is_dir:
        entry.size = desc.size
    info = desc.info
    if isinstance(info.get("global_step"), int):
        entry.global_step = info["global_step"]
    if isinstance(info.get("epoch"), int):
        entry.epoch = info["epoch"]
    if isinstance(info.get("step"), int):
        entry.step = info["step"]
    if isinstance(info.get("time"), (int, float)):
        entry.saved_at = float(info["time"])
    if isinstance(info.get("metrics"), dict):
        entry.metrics = {k: v for k, v in info["metrics"].items() if isinstance(v, (int, float))}


def newest_readable(candidates: list[ListedCheckpoint], directory: str, *, run: str | None = None,
                    dec_key: bytes | None = None,
                    require_finite: bool = False) -> tuple[ListedCheckpoint, Checkpoint] | None:
    """The newest of ``candidates`` (newest first) that reads and verifies; bad ones are skipped and named.

    ``run``: only that run's checkpoints (select_run: never another run's). Best-model copies
    (prefix ``*-best``) are for evaluation and never resumed from. ``require_finite``: skip,
    saying so, checkpoints whose weights hold NaN or Inf; if every one does, DivergedRunError.
    If there are candidates and none reads, DamagedRunError (never a silent fresh start).
    """
    if run is not None:
        candidates = select_run(candidates, run, directory)
    diverged: list[str] = []
    damaged: list[tuple[str, str]] = []  # (name, reason): named once the outcome is known
    for entry in candidates:
        if entry.prefix is not None and entry.prefix.endswith("-best"):
            continue
        try:
            if not entry.valid:
                raise CorruptCheckpointError(entry.reason)
            ckpt = files.read_checkpoint(entry.path, dec_key=dec_key)
            foreign = foreign_reason(entry.path, ckpt.format, ckpt.meta)  # an encrypted one, known only now
            if foreign is not None:
                raise CorruptCheckpointError(foreign)
        except (TorchResumeError, OSError) as exc:
            damaged.append((entry.name, str(exc)))
            continue
        if require_finite and not tree_finite(ckpt.tree):
            log.warning("skipping %s: its weights are not finite (NaN or Inf: the run diverged there)", entry.path)
            diverged.append(entry.name)
            continue
        say_skipped(damaged)
        return entry, ckpt
    if diverged:
        say_skipped(damaged)
        raise DivergedRunError(
            f"{directory}: every checkpoint of the run ({', '.join(diverged)}) has non-finite "
            "weights (the run diverged); start over with resume='none', e.g. at a lower learning rate")
    if damaged:
        raise damaged_run(directory, damaged)
    return None


def say_skipped(damaged: list[tuple[str, str]]) -> None:
    """One warning per damaged checkpoint passed over on the way to a good one ((name, reason) pairs)."""
    for _, reason in damaged:
        log.warning("skipping invalid checkpoint %s", reason)


def damaged_run(directory: str, damaged: list[tuple[str, str]]) -> DamagedRunError:
    """The error of a run whose every checkpoint failed to read ((name, reason) pairs, newest first)."""
    names = ", ".join(name for name, _ in damaged)
    return DamagedRunError(
        f"{directory}: no checkpoint of the run can be read ({names}; the newest: "
        f"{_reason_only(damaged[0][1])}); nothing to resume from: put back a good copy, or "
        "start over with resume='none' (the damaged files are kept)")


def _reason_only(reason: str) -> str:
    """A reader's message without the path it starts with (the names are listed already)."""
    head, sep, rest = reason.partition(": ")
    return rest if sep and ("/" in head or head.endswith(".ckpt")) else reason


def tree_finite(tree: Any) -> bool:
    """Whether every floating tensor of a checkpoint's state is finite (RNG and callbacks' scores aside:
    a best score starts as +-inf; so is each rank's own state of a sharded checkpoint, ``rank_states``,
    which holds them too)."""
    if not isinstance(tree, dict):
        return True
    ok = True

    def check(t: torch.Tensor) -> torch.Tensor:
        nonlocal ok
        if ok and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            ok = False
        return t
    map_tensors({k: v for k, v in tree.items() if k not in ("rng", "callbacks", "rank_states")}, check)
    return ok
