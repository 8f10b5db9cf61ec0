"""The save slot: at most one save in flight, and what a save does when the slot is busy.

Every saver goes through one: ``CheckpointManager``, ``DistributedCheckpointManager`` and
``api.save_checkpoint(async_save=True)``. A synchronous slot runs the write in the caller.
An asynchronous one snapshots the state into reused staging buffers (the ``Stager``: plain
tensors by default, DTensor local shards for sharded saves), hands the write to one
background ``AsyncWriter`` thread and returns; the next save finds the slot busy and waits
(``on_busy="wait"``) or is skipped (``"skip"``). Background writes may be paced
(``write_mb_per_s``); whoever waits lifts the pace. A failed background write is raised by
the next save, ``wait()`` or ``close()``, never lost. Retention's deletes run in the same
background thread (``after``), for synchronous saves too: a save returns once it is committed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from torchresume.async_writer import AsyncWriter
from torchresume.errors import CheckpointConfigError
from torchresume.log import log
from torchresume.staging import StagingBuffers
from torchresume.storage.pacing import Pace, check_write_rate

ON_BUSY = ("wait", "skip")


def check_on_busy(on_busy: str) -> str:
    """What a save does when the previous background save is still running: "wait" or "skip"."""
    if on_busy not in ON_BUSY:
        raise CheckpointConfigError(
            f"on_busy={on_busy!r} is not a policy; use 'wait' (block until the previous background "
            "save is committed, then save) or 'skip' (drop this save and keep training)")
    return on_busy


class Stager(Protocol):
    """Copies a state tree into buffers the background write may read while training goes on."""

    def stage(self, tree: Any) -> Any: ...
    def release(self) -> None: ...


Write = Callable[[Any, "Pace | None"], object]


class SaveSlot:
    """One save in flight at most; ``run`` writes now (sync) or stages and writes in the background."""

    def __init__(self, *, async_save: bool = False, on_busy: str = "wait", write_mb_per_s: float | None = None,
                 stager: Stager | None = None, name: str = "torchresume-writer") -> None:
        if not isinstance(async_save, bool):
            raise CheckpointConfigError(f"async_save must be True or False, got {async_save!r}")
        self.async_save = async_save
        self.on_busy = check_on_busy(on_busy)
        self.write_mb_per_s = check_write_rate(write_mb_per_s, async_save)
        self._stager: Stager | None = (stager or StagingBuffers()) if async_save else None
        self._name = name
        self._writer: AsyncWriter | None = None

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
        copy = self._stager.stage(tree)  # complete on return: later updates are not written
        pace = Pace(self.write_mb_per_s * 1e6) if self.write_mb_per_s is not None and paced else None
        if self._writer is None:
            self._writer = AsyncWriter(name=self._name)
        self._writer.submit(lambda: write(copy, pace), path, on_wait=pace.hurry.set if pace is not None else None)

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
        try:
            if writer is not None and writer is _DELETER:
                writer.wait()  # shared by every sync slot: waited for, never shut down
            elif writer is not None:
                writer.close()
        finally:
            if self._stager is not None:
                self._stager.release()


_DELETER: AsyncWriter | None = None


def _deleter() -> AsyncWriter:
    """The one background thread that runs retention's deletes for every synchronous slot."""
    global _DELETER
    if _DELETER is None:
        _DELETER = AsyncWriter(name="torchresume-retention")
    return _DELETER


__all__ = ["ON_BUSY", "SaveSlot", "Stager", "check_on_busy"]
