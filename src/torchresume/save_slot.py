"""The save slot: at most one save in flight, and what a save does when the slot is busy.

Every saver goes through one: ``CheckpointManager``, ``ShardedStore`` and
``api.save_checkpoint(async_save=True)``. A synchronous slot runs the write in the caller.
An asynchronous one snapshots the state into reused staging buffers (the ``Stager``: plain
tensors by default, DTensor local shards for sharded saves), hands the write to one
background ``AsyncWriter`` thread and returns; the next save finds the slot busy and waits
(``on_busy="wait"``) or is skipped (``"skip"``). Background writes may be paced
(``write_mb_per_s``); whoever waits lifts the pace. A failed background write is raised by
the next save, ``wait()`` or ``close()``, never lost. Retention's deletes run in the same
background thread (``after``), for synchronous saves too: a save returns once it is committed.

With ``overlap=True`` (asynchronous slots) staging itself overlaps training: the copies of the
tensors a guarded optimizer owns (its parameters and state, which only its ``step`` changes) are
made after ``run`` returned, beside the next forward and backward, and every guarded
``optimizer.step`` first waits for them (a step pre-hook; ``wait_staged`` for anything else that
would change them). Everything else is copied before ``run`` returns (snapshot.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import torch

from torchresume.async_writer import AsyncWriter
from torchresume.errors import CheckpointConfigError
from torchresume.log import log
from torchresume.snapshot import Snapshot, storage_key
from torchresume.staging import StagingBuffers
from torchresume.storage.pacing import Pace, check_write_rate

ON_BUSY = ("wait", "skip")


class _DefaultDeadline(float):
    """The default deadline: unlike a value passed explicitly, it is shortened to half a process
    group's timeout that is not longer than it (Lightning and HF Trainer users cannot pass one)."""


DEFAULT_SAVE_DEADLINE_S: float = _DefaultDeadline(300.0)  # far below a group's timeout (ours 600 s, torch's 10-30 min)


def is_default_deadline(save_deadline_s: float | None) -> bool:
    """Whether ``save_deadline_s`` is the default (not a value the user passed)."""
    return isinstance(save_deadline_s, _DefaultDeadline)


def check_on_busy(on_busy: str) -> str:
    """What a save does when the previous background save is still running: "wait" or "skip"."""
    if on_busy not in ON_BUSY:
        raise CheckpointConfigError(
            f"on_busy={on_busy!r} is not a policy; use 'wait' (block until the previous background "
            "save is committed, then save) or 'skip' (drop this save and keep training)")
    return on_busy


def check_save_deadline(save_deadline_s: float | None) -> float | None:
    """A sharded save's deadline: seconds > 0 each rank has to write its part, or None (no deadline)."""
    if save_deadline_s is None:
        return None
    if isinstance(save_deadline_s, bool) or not isinstance(save_deadline_s, (int, float)) or not (
            0 < save_deadline_s < math.inf):
        raise CheckpointConfigError(
            f"save_deadline_s must be a number of seconds > 0 (each rank's time to write its part of a "
            f"sharded save, default {DEFAULT_SAVE_DEADLINE_S:g}) or None for no deadline, got {save_deadline_s!r}")
    return save_deadline_s if is_default_deadline(save_deadline_s) else float(save_deadline_s)


class Stager(Protocol):
    """Copies a state tree into buffers the background write may read while training goes on;
    the copies of tensors whose ``storage_key`` is in ``deferred`` may complete later (snapshot.py)."""

    def snapshot(self, tree: Any, deferred: frozenset[int] = frozenset()) -> Snapshot: ...
    def release(self) -> None: ...


Write = Callable[[Any, "Pace | None"], object]


class SaveSlot:
    """One save in flight at most; ``run`` writes now (sync) or stages and writes in the background."""

    def __init__(self, *, async_save: bool = False, on_busy: str = "wait", write_mb_per_s: float | None = None,
                 stager: Stager | None = None, name: str = "torchresume-writer", overlap: bool = False) -> None:
        if not isinstance(async_save, bool):
            raise CheckpointConfigError(f"async_save must be True or False, got {async_save!r}")
        self.overlap = check_overlap(overlap, async_save)
        self.async_save = async_save
        self.on_busy = check_on_busy(on_busy)
        self.write_mb_per_s = check_write_rate(write_mb_per_s, async_save)
        self._stager: Stager | None = (stager or StagingBuffers()) if async_save else None
        self._name = name
        self._writer: AsyncWriter | None = None
        self._guarded: list[torch.optim.Optimizer] = []
        self._hooks: list[Any] = []
        self._staging: Snapshot | None = None  # a snapshot whose deferred copies may still run

    def guard_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Let overlapped staging defer the copies of ``optimizer``'s parameters and state: its
        ``step`` waits (a pre-hook) until the copy of the save in flight is complete. No-op unless
        ``overlap``; guarding an optimizer twice changes nothing. A wrapper (accelerate's, Lightning's)
        is unwrapped: the hook goes on the optimizer whose ``step`` changes the tensors."""
        while isinstance(inner := getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
            optimizer = inner
        if not self.overlap or any(o is optimizer for o in self._guarded):
            return
        self._guarded.append(optimizer)
        self._hooks.append(optimizer.register_step_pre_hook(lambda *_: self.wait_staged()))

    def wait_staged(self) -> None:
        """Return once the save in flight no longer needs the live tensors: call it before changing
        a guarded optimizer's parameters or state other than through its ``step``."""
        staging, self._staging = self._staging, None
        if staging is not None:
            staging.gate()

    def _deferred(self) -> frozenset[int]:
        """The storages only a guarded optimizer's step changes: its parameters and state tensors."""
        keys: set[int] = set()
        for optimizer in self._guarded:
            keys.update(storage_key(p) for group in optimizer.param_groups for p in group["params"])
            keys.update(storage_key(v) for state in optimizer.state.values() for v in state.values()
                        if isinstance(v, torch.Tensor))
        keys.discard(0)
        return frozenset(keys)

    @property
    def saving(self) -> str | None:
        """What the background save in flight is writing, or None (always None for a sync slot)."""
        return self._writer.running() if self._writer is not None and self._stager is not None else None

    def claim(self, path: str, on_busy: str | None = None) -> bool:
        """Make the slot free for a save of ``path``: wait for the one in flight, or (``"skip"``)
        return False to drop this save. Re-raises a failed background save."""
        if self._writer is None or self._stager is None:  # a sync slot's thread only deletes: never waited for
            return True
        running = self._writer.running()
        if running is None:
            self._writer.raise_if_failed()
            return True
        if check_on_busy(on_busy or self.on_busy) == "skip":
            log.warning("skipped saving %s: the background save of %s is still running (on_busy='skip'; "
                        "save less often to keep every save)", path, running)
            return False
        paced = "" if self.write_mb_per_s is None else f", raise write_mb_per_s (now {self.write_mb_per_s:g} MB/s)"
        log.info("saving %s waits for the background save of %s (saves are due faster than they are "
                 "written; save less often%s, or on_busy='skip')", path, running, paced)
        self._writer.wait()
        return True

    def run(self, path: str, tree: Any, write: Write, *, paced: bool = True) -> None:
        """Write ``tree`` to ``path`` with ``write(tree, pace)``: now, or staged and in the background.

        Call ``claim`` first. ``paced=False`` (breakpoints, stop saves) writes at full speed.
        """
        if self._stager is None:
            write(tree, None)
            return
        snapshot = self._stager.snapshot(tree, self._deferred() if self._guarded else frozenset())
        self._staging = snapshot if snapshot.deferred else None  # the next guarded step waits for it
        pace = Pace(self.write_mb_per_s * 1e6) if self.write_mb_per_s is not None and paced else None
        if self._writer is None:
            self._writer = AsyncWriter(name=self._name)

        def stage_then_write() -> None:
            snapshot.copy_rest()  # every copy complete: the write sees the named step's state
            write(snapshot.tree, pace)

        self._writer.submit(stage_then_write, path, on_wait=pace.hurry.set if pace is not None else None)

    def after(self, job: Callable[[], object], what: str) -> None:
        """Run ``job`` in the background thread once what is queued there is done: retention's
        deletes after a commit, off the training thread (an unlink of a GiB checkpoint took ~1 s)."""
        if self._writer is None:  # sync slots share one thread: a sweep of many runs leaves no idle ones
            self._writer = AsyncWriter(name=self._name) if self._stager is not None else _deleter()
        self._writer.submit(job, what)

    def settle(self) -> None:
        """Wait for the deletes a synchronous slot runs in the background (a listing that must not
        show a checkpoint being deleted); an asynchronous slot's save in flight is not waited for."""
        if self._stager is None and self._writer is not None:
            self._writer.wait()

    def raise_if_failed(self) -> None:
        if self._writer is not None:
            self._writer.raise_if_failed()

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the background save; re-raise its failure. TimeoutError after ``timeout`` seconds."""
        if self._writer is not None:
            self._writer.wait(timeout)

    def close(self) -> None:
        """Wait for the background save (re-raising its failure), then free the writer and the buffers."""
        writer, self._writer = self._writer, None
        for hook in self._hooks:
            hook.remove()
        self._hooks, self._guarded, self._staging = [], [], None
        try:
            if writer is not None and writer is _DELETER:
                writer.wait()  # shared by every sync slot: waited for, never shut down
            elif writer is not None:
                writer.close()
        finally:
            if self._stager is not None:
                self._stager.release()


def check_overlap(overlap: bool, async_save: bool) -> bool:
    """Overlapped staging is a way of staging an asynchronous save: refused without one."""
    if not isinstance(overlap, bool):
        raise CheckpointConfigError(f"overlap must be True or False, got {overlap!r}")
    if overlap and not async_save:
        raise CheckpointConfigError(
            "overlap=True needs async_save=True: it overlaps the copy of a background save with the "
            "next training step, and a synchronous save has no copy; pass async_save=True too, or drop overlap")
    return overlap


_DELETER: AsyncWriter | None = None


def _deleter() -> AsyncWriter:
    """The one background thread that runs retention's deletes for every synchronous slot."""
    global _DELETER
    if _DELETER is None:
        _DELETER = AsyncWriter(name="torchresume-retention")
    return _DELETER


__all__ = ["DEFAULT_SAVE_DEADLINE_S", "ON_BUSY", "SaveSlot", "Stager", "check_on_busy", "check_overlap",
           "check_save_deadline", "is_default_deadline"]
