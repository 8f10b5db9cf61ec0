"""CheckpointManager: naming, saving full training state, listing, newest valid, retention.

It keeps the books; the format module lays out bytes and storage writes
them. A training state is one checkpoint: the model's state_dict at the top
level (so the file loads into a bare network), plus ``optimizer``,
``scheduler``, ``scaler``, ``sampler``, ``rng``, ``callbacks`` and ``extra``
sub-trees, and an info block (epoch, step, global step, metrics, run config).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from torchresume import catalog, files, retention, run_lock, signals
from torchresume.catalog import ListedCheckpoint
from torchresume.errors import (
    CheckpointConfigError,
    CheckpointWriteError,
    DecryptionError,
    TorchResumeError,
)
from torchresume.files import encode_state, read_checkpoint, write_encoded
from torchresume.format import crypto
from torchresume.format.reader import Checkpoint
from torchresume.log import log
from torchresume.naming import checkpoint_name, unique_prefix
from torchresume.retention import KeepLast, KeepNewestVerified, RetentionPolicy
from torchresume.save_slot import DEFAULT_SAVE_DEADLINE_S, ON_BUSY, SaveSlot, check_on_busy, is_default_deadline
from torchresume.signals import STOP_SIGNALS, StopSignals
from torchresume.state.registry import BUILTIN, StateRegistry, capture_tree, restore_tree
from torchresume.state.stateful import Stateful
from torchresume.state.tree import map_tensors
from torchresume.storage import is_remote, resolve
from torchresume.storage.local import LocalStorage, clean_stale_temps
from torchresume.storage.pacing import Pace
from torchresume.storage.staged import StagedRemote
from torchresume.world import World, process_group_up

if TYPE_CHECKING:
    from torchresume.sharded_layout import ShardedLayout


def _encrypted(entry: ListedCheckpoint) -> bool:
    try:
        return not entry.is_dir and files.describe(entry.path).encrypted
    except (TorchResumeError, OSError, ValueError):
        return False  # unreadable: verify judges it below


def prune(directory: str, keep: int, dec_key: bytes | None = None) -> list[str]:
    """Keep the newest ``keep`` checkpoints of every prefix in ``directory``; returns what was deleted.

    The newest checkpoint that verifies is kept too, even when newer damaged files fill ``keep``.
    Encrypted checkpoints verify only with ``dec_key``: without it, nothing is deleted and a
    DecryptionError says so (a damaged newer file could otherwise push out the only good one).
    """
    deleted: list[str] = []
    entries = catalog.list_checkpoints(directory, verify=False)
    locked = None if dec_key is not None else next((e.path for e in entries if _encrypted(e)), None)
    if locked is not None:
        raise DecryptionError(f"{locked} is encrypted: pruning keeps the newest checkpoint that verifies, "
                              "which takes the key; pass dec_key=<the key used to save it>")
    for prefix in {e.prefix for e in entries if e.prefix is not None}:
        family = [e for e in entries if e.prefix == prefix]
        deleted += retention.apply(family, [KeepLast(keep), KeepNewestVerified(dec_key)])
    return deleted


LAYOUTS = ("file", "sharded")


def choose_layout(layout: str | None, world: World, model: nn.Module | None) -> str:
    """``layout`` checked, or the one the world and the state call for: sharded under torchrun or
    when the model holds DTensor shards (FSDP2), else one file (or directory) per checkpoint. A
    manager without a model only reads (listing, the newest readable file): it keeps the file layout."""
    if layout is None:
        return "sharded" if model is not None and (world.distributed or _holds_shards(model)) else "file"
    if layout not in LAYOUTS:
        raise CheckpointConfigError(f"layout must be one of {LAYOUTS} or None (chosen from the world), got {layout!r}")
    return layout


def _holds_shards(model: nn.Module | None) -> bool:
    if model is None or not process_group_up():
        return False
    from torch.distributed.tensor import DTensor
    return any(isinstance(p, DTensor) for p in model.parameters())


def snapshot(tree: Any) -> Any:
    """A CPU copy of every tensor: what a background writer may use while training goes on."""
    return map_tensors(tree, lambda t: t.detach().to("cpu", copy=True))


_SAID_STALE: set[str] = set()  # staged files already named as too old to upload (once per process)


class CheckpointManager:
    """Saves and restores full training state in ``directory`` (a path or an ``s3://`` URL) under one prefix,
    in one process and under torchrun alike.

    A checkpoint holds the model's weights at the top level, the optimizer, scheduler, sampler,
    AMP scaler and every registered ``Stateful`` by name, the RNG streams (python, numpy, torch,
    each CUDA device), epoch and step. Files are named ``{prefix}-{epoch}_{step}.ckpt``.

    Args:
        directory: where checkpoints go; a URL writes through durable local staging, then uploads.
        keep: an int (keep the newest N) or retention policies (``KeepLast``, ``KeepBest``,
            ``KeepEveryNMinutes``); applied only after a save is committed.
        async_save: ``save()`` copies the state into reused host buffers and returns; one
            background thread writes and commits it. ``on_busy`` says what a save does while the
            previous one still runs (``"wait"`` or ``"skip"``); ``write_mb_per_s`` paces it.
        overlap: with ``async_save``, ``save()`` returns before the optimizer's parameters and
            state are copied: the copy runs beside the next forward and backward, and
            ``optimizer.step`` waits for it (``guard_optimizer`` adds others; ``wait_staged``).
        enc_key: encrypt every checkpoint at rest with this 16/24/32-byte key.
        enc_mode: ``"AES-GCM"`` (``"AES-CBC"`` too for MindSpore files).
        file_format: ``None`` (native) or ``"ckpt"`` (MindSpore's protobuf ``.ckpt``).
        layout: ``None`` (chosen from the world: ``"sharded"`` under torchrun or for a model holding
            DTensor shards, else ``"file"``), ``"file"`` (one file or directory per checkpoint) or
            ``"sharded"`` (one DCP checkpoint per save, every rank writing its part; every method
            is then collective, and rank 0 holds the run lock). Each layout reads the other's.
        save_deadline_s: sharded layout only: seconds each rank has to write its part of a save
            (``distributed.ShardedStore``); past it, every rank aborts that save.

    Example:
        ```python
        mgr = tr.CheckpointManager("runs/doc", model=net, optimizer=opt, prefix="net", keep=2)
        info = mgr.restore_latest()          # None on a fresh start
        mgr.save(epoch=1, step=10)
        mgr.close()
        ```
    """

    def __init__(self, directory: str, *, model: nn.Module | None = None,
                 optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                 sampler: Stateful | None = None, scaler: Any = None,
                 extra: dict[str, Stateful] | None = None, prefix: str = "ckpt",
                 keep: Sequence[RetentionPolicy] | int | None = 5, async_save: bool = False,
                 enc_key: bytes | None = None, enc_mode: str = "AES-GCM",
                 saved_network: nn.Module | None = None,
                 stateful: dict[str, Stateful] | None = None, file_format: str | None = None,
                 crc_check: bool = False, on_busy: str = "wait",
                 write_mb_per_s: float | None = None, overlap: bool = False, layout: str | None = None,
                 save_deadline_s: float | None = DEFAULT_SAVE_DEADLINE_S) -> None:
        self.directory = str(directory)
        self.storage, self._where = resolve(self.directory)
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.sampler, self.scaler = sampler, scaler
        self.state = StateRegistry()
        for name, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler),
                          ("sampler", sampler)):
            if obj is not None:
                self.state.register(name, obj)
        for name, obj in {**(extra or {}), **(stateful or {})}.items():
            self.register(name, obj)
        self.saved_network = saved_network
        self.prefix = prefix
        self.policies: list[RetentionPolicy] = (
            [KeepLast(keep)] if isinstance(keep, int) else list(keep or []))
        self.enc_key = crypto.check_key(enc_key, enc_mode, "enc_key") if enc_key and (
            file_format != "ckpt") else enc_key
        self.file_format, self.enc_mode, self.crc_check = file_format, enc_mode, crc_check
        self.world = World.current()
        self.layout = choose_layout(layout, self.world, model)
        # At most one save in flight; async saves snapshot into reused host buffers.
        self.slot = SaveSlot(async_save=async_save, on_busy=on_busy, write_mb_per_s=write_mb_per_s, overlap=overlap)
        self.sharded: ShardedLayout | None = None
        if self.layout == "sharded":
            self.sharded = self._sharded_layout(save_deadline_s, file_format=file_format, write_mb_per_s=write_mb_per_s)
        elif save_deadline_s is not None and not is_default_deadline(save_deadline_s):
            raise CheckpointConfigError(f"save_deadline_s={save_deadline_s!r}: a deadline applies to the ranks of a "
                                        "sharded save (under torchrun, or layout='sharded'); drop it here")
        if optimizer is not None:
            self.slot.guard_optimizer(optimizer)
        self.last_saved: str | None = None
        # Remote directories: write locally (durably) first, upload in the background.
        self.remote = StagedRemote(self.directory, self.storage) if (
            is_remote(self.directory) and self.sharded is None) else None
        self.staging = self.remote.staging if self.remote is not None else None
        self._lock: run_lock.RunLock | None = None  # rank 0's
        self._locked = False  # every rank: the job holds the lock
        self._verbose = False
        # Completed steps of the run: restored from a checkpoint, counted by Guard.step_done.
        self.global_step = 0

    def _sharded_layout(self, save_deadline_s: float | None, *, file_format: str | None,
                        write_mb_per_s: float | None) -> ShardedLayout:
        """The sharded layout's engine, after refusing what it cannot honour; it brings its own save slot."""
        from torchresume.sharded_layout import ShardedLayout, refuse_file_options
        refuse_file_options(file_format=file_format, saved_network=self.saved_network, write_mb_per_s=write_mb_per_s,
                            crc_check=self.crc_check, enc_mode=self.enc_mode)
        sharded = ShardedLayout(self.directory, model=self.model, optimizer=self.optimizer, registry=self.state,
                                world=self.world, policies=self.policies, prefix=self.prefix,
                                async_save=self.slot.async_save, enc_key=self.enc_key, on_busy=self.slot.on_busy,
                                overlap=self.slot.overlap, save_deadline_s=save_deadline_s)
        self.slot = sharded.store.slot
        return sharded

    @property
    def verbose(self) -> bool:
        """One line per saved (and uploaded) checkpoint; ModelCheckpoint turns it on."""
        return self._verbose

    @verbose.setter
    def verbose(self, value: bool) -> None:
        self._verbose = value
        if self.remote is not None:
            self.remote.verbose = value

    def register(self, name: str, obj: Any) -> None:
        """Checkpoint ``obj`` (a Stateful) under ``name`` beside the model and optimizer.

        Its state is saved under ``extra.<name>`` and restored by restore()/restore_latest().
        """
        if name in BUILTIN:
            raise ValueError(f"state name {name!r} is reserved for torchresume's own entries {BUILTIN}")
        self.state.register(name, obj)

    @property
    def extra(self) -> dict[str, Any]:
        """The user-registered Stateful objects, by name."""
        return {e.name: e.obj for e in self.state if e.name not in BUILTIN}

    # -- the run lock ---------------------------------------------------------------------
    def acquire_lock(self) -> None:
        """Make this job the directory's only writer; collective under torchrun.

        Rank 0 takes the run lock; if another run holds it, every rank raises the same
        RunLockedError. Only then is anything cleaned: a killed writer's temporary files.
        Saving and resuming take it first; call it yourself to claim the directory earlier.
        """
        if self._locked:
            return
        self.world.on_rank_0(self._take_lock)
        self._locked = True

    def _take_lock(self) -> None:
        self._lock = run_lock.acquire(self.directory, local_dir=self.staging)
        if isinstance(self.storage, LocalStorage):
            clean_stale_temps(self._where)
        catalog.remove_unfinished(self.directory, self.prefix)  # a killed directory or sharded save's parts

    def hold_lock(self) -> None:
        """Take the run lock, or renew it (an object-storage lock's heartbeat) when held. Under torchrun
        a failed renewal is said, never raised: the other ranks are on their way into the save."""
        if not self._locked:
            self.acquire_lock()
        elif self._lock is not None:
            try:
                self._lock.refresh()
            except Exception as exc:
                if not self.world.distributed:
                    raise
                log.warning("could not renew the run lock of %s: %s", self.directory, exc)

    def release_lock(self) -> None:
        self._locked = False
        if self._lock is not None:
            self._lock = None
            run_lock.release(self.directory)

    # -- saving ---------------------------------------------------------------------------
    def file_name(self, epoch: int, step: int, breakpoint: bool = False) -> str:
        return checkpoint_name(self.prefix, epoch, step, breakpoint)

    def capture(self, *, callbacks: dict[str, Any] | None = None,
                rng_state: dict[str, Any] | None = None,
                sampler_state: dict[str, Any] | None = None) -> dict[str, Any]:
        """The training state as one tree (tensors still shared with the live objects)."""
        if self.saved_network is not None:
            return dict(self.saved_network.state_dict())
        return capture_tree(self.model, self.state, callbacks=callbacks, rng_state=rng_state,
                            sampler_state=sampler_state)

    def save(self, epoch: int, step: int, global_step: int | None = None, *,
             breakpoint: bool = False, info: dict[str, Any] | None = None,
             append: dict[str, Any] | None = None, callbacks: dict[str, Any] | None = None,
             rng_state: dict[str, Any] | None = None,
             sampler_state: dict[str, Any] | None = None, on_busy: str | None = None) -> str | None:
        """Write a checkpoint of the current state; retention runs after it is committed.

        With ``async_save`` the call returns once the state is copied and the write runs in the
        background. If the previous background save is still running, ``on_busy`` (default: the
        manager's; breakpoints always wait) decides: "wait" for it, or "skip" this save and
        return None.
        """
        if global_step is None:  # a guarded loop counts them; else the step is all we know
            global_step = self.global_step or step
        if self.sharded is not None:
            self.hold_lock()
            self.last_saved = self.sharded.save(
                epoch, step, global_step, breakpoint=breakpoint, info={"prefix": self.prefix, **(info or {})},
                append=append, callbacks=callbacks, rng_state=rng_state, sampler_state=sampler_state,
                on_busy="wait" if breakpoint else on_busy)
            if self._verbose and self.last_saved is not None:
                background = " in the background (committed when every rank finished)" if self.slot.async_save else ""
                log.info("%s %s%s", "saving" if background else "saved", self.last_saved, background)
            return self.last_saved
        path = self.storage.join(self.directory, self.file_name(epoch, step, breakpoint))
        if not self.slot.claim(path, "wait" if breakpoint else on_busy):
            return None
        if self.remote is not None:
            self.remote.raise_if_failed()
        self.hold_lock()
        tree = self.capture(callbacks=callbacks, rng_state=rng_state, sampler_state=sampler_state)
        full_info = {"epoch": epoch, "step": step, "global_step": global_step,
                     "prefix": self.prefix, "breakpoint": breakpoint, "time": time.time(),
                     **(info or {})}
        kind = "model" if self.saved_network is not None else "train_state"
        self.slot.run(path, tree, lambda t, pace: self._commit(kind, t, full_info, append, path, pace),
                      paced=not breakpoint)
        return path

    @property
    def saving(self) -> str | None:
        """The checkpoint a background save is writing now, or None."""
        return self.slot.saving

    def guard_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """With ``overlap``: copy ``optimizer``'s parameters and state after ``save()`` returned;
        its ``step`` waits until that copy is complete. The manager's own optimizer is guarded."""
        self.slot.guard_optimizer(optimizer)

    def wait_staged(self) -> None:
        """Return once the save in flight no longer reads the live tensors. With ``overlap``, call
        it before changing parameters or optimizer state other than through ``optimizer.step``
        (a manual weight edit, a load into the live model); the step itself waits on its own."""
        self.slot.wait_staged()

    @property
    def on_busy(self) -> str:
        return self.slot.on_busy

    @property
    def write_mb_per_s(self) -> float | None:
        return self.slot.write_mb_per_s

    def _commit(self, kind: str, tree: Any, info: dict[str, Any], append: dict[str, Any] | None,
                path: str, pace: Pace | None = None) -> None:
        start = time.perf_counter()
        encoded: Any = encode_state(kind, tree, info=info, append=append)
        enc_key = self.enc_key
        if self.file_format == "ckpt":  # MindSpore protobuf, laid out (and encrypted) there
            from torchresume.files import mindspore_io
            marked = {**(append or {}), **mindspore_io.run_entry(info)}  # resume discovery takes only marked files
            encoded, enc_key = mindspore_io.Parts(mindspore_io.encode(
                mindspore_io.entries_of(tree, global_step=info.get("global_step")), append=marked,
                crc_check=self.crc_check, enc_key=self.enc_key, enc_mode=self.enc_mode)), None
        if self.remote is None:
            size = write_encoded(encoded, path, enc_key, pace=pace)
            self.last_saved = path  # committed: only now is it the newest
            self._report("saved", path, size, start)
            if self.slot.async_save:  # already in the background thread
                self.apply_retention(protect=path)
            else:
                self.slot.after(lambda: self._retain(path), f"retention after {path}")
            return
        local = self.remote.local_path(path)
        size = write_encoded(encoded, local, enc_key, pace=pace)
        self.last_saved = path
        self._report("saved", local, size, start, f"; uploading to {path}")
        self.remote.upload(local, path, after=lambda: self.apply_retention(protect=path))

    def _report(self, what: str, path: str, size: int, start: float, tail: str = "") -> None:
        """One line per checkpoint (when ``verbose``): its path, size and how long it took."""
        if self._verbose:
            from torchresume.inspection import human_bytes
            log.info("%s %s (%s, %.2f s)%s", what, path, human_bytes(size), time.perf_counter() - start, tail)

    def _retain(self, path: str) -> None:
        """Retention protecting ``path`` (a commit's, in the shared deleter thread; or a resume's): a
        failure is said, not raised (the checkpoint is good; older ones are kept)."""
        try:
            self.apply_retention(protect=path)
        except OSError as exc:
            log.warning("%s is committed but retention failed: %s; older checkpoints were kept", path, exc)

    def apply_retention(self, protect: str | None = None) -> list[str]:
        """Delete this prefix's checkpoints that no policy keeps; returns what was deleted."""
        if self.sharded is not None:
            return self.sharded.store.apply_retention(protect)
        if not self.policies:
            return []
        entries = catalog.list_checkpoints(self.directory, verify=False, prefix=self.prefix)  # not settle(): the
        return retention.apply(entries, self.policies, protect)  # deletes run here, in the slot's thread

    def wait(self, timeout: float | None = None) -> None:
        """Wait for background saves and uploads; re-raise the first failure.

        With ``timeout``, raises TimeoutError if uploads are still running then.
        """
        self.slot.wait(timeout)
        if self.remote is not None:
            self.remote.wait(timeout)

    def close(self) -> None:
        try:
            self.slot.close()
            if self.remote is not None:
                self.remote.close()
            if self.sharded is not None:
                self.sharded.close()
        finally:
            self.release_lock()

    # -- finding --------------------------------------------------------------------------
    def checkpoints(self, *, all_prefixes: bool = False, verify: bool = False) -> list[ListedCheckpoint]:
        """This prefix's (or every) checkpoint in the directory, newest first."""
        self.slot.settle()  # never list a checkpoint retention is deleting
        return catalog.list_checkpoints(self.directory, verify=verify,
                                        prefix=None if all_prefixes else self.prefix)

    def _resume_candidates(self) -> list[ListedCheckpoint]:
        """Every checkpoint in the directory and, for a remote one, staged files not uploaded yet
        (none older than the newest committed remotely)."""
        entries = self.checkpoints(all_prefixes=True)
        if self.staging:
            entries += self._staged_not_uploaded(entries, verify=False)
            entries.sort(key=ListedCheckpoint.order_key, reverse=True)
        return entries

    def _staged_not_uploaded(self, remote: list[ListedCheckpoint], *, verify: bool, say: bool = False,
                             prefix: str | None = None) -> list[ListedCheckpoint]:
        """Staged checkpoints the remote lacks and that are newer than the newest committed one of
        their own run (``prefix``: that run's alone); older ones are never uploaded (``say``: a line
        for each, and the stale copy leaves the staging cache)."""
        assert self.staging is not None
        names = {e.name for e in remote}
        newest: dict[str | None, ListedCheckpoint] = {}  # each run's newest committed checkpoint
        for e in remote:
            if e.prefix not in newest or e.order_key() > newest[e.prefix].order_key():
                newest[e.prefix] = e
        out = []
        for entry in catalog.list_checkpoints(self.staging, verify=verify, dec_key=self.enc_key, prefix=prefix):
            if entry.name in names or not entry.valid:
                continue
            committed = newest.get(entry.prefix)
            if committed is not None and entry.order_key() < committed.order_key():
                if say:
                    self._evict_stale(entry, committed)
                continue
            out.append(entry)
        return out

    def _evict_stale(self, entry: ListedCheckpoint, newer: ListedCheckpoint) -> None:
        """A staged checkpoint older than its run's newest committed one is never uploaded (it would
        bring back what retention pruned): it leaves the staging cache, with one line."""
        assert self.staging is not None
        catalog.delete(entry)
        if entry.path not in _SAID_STALE:
            _SAID_STALE.add(entry.path)
            log.warning("not uploading %s, staged by an earlier process: %s, committed there, is newer "
                        "(removed the staged copy from %s)", entry.name, newer.path, self.staging)

    def _evict_uploaded(self, remote: list[ListedCheckpoint]) -> None:
        """Staged copies of this run already committed remotely leave the staging cache (a kill, or
        another manager's upload, came before their eviction), but the newest: it stays as the
        local cache until this manager's next upload commits."""
        assert self.remote is not None and self.staging is not None
        names = {e.name for e in remote if e.prefix == self.prefix}
        newest = max((e for e in remote if e.prefix == self.prefix), key=ListedCheckpoint.order_key, default=None)
        for entry in catalog.list_checkpoints(self.staging, verify=False, prefix=self.prefix):
            if entry.name not in names or newest is None:
                continue
            if entry.name == newest.name:
                self.remote.keep_as_cache(entry.path)
            else:
                catalog.delete(entry)

    def upload_pending(self) -> list[str]:
        """Queue uploads of this run's staged checkpoints the remote lacks (a kill came before their
        upload); retention runs after each.

        Staging is per endpoint and URL. A staged file older than the run's newest committed
        checkpoint is never uploaded and leaves the staging cache, as do staged copies already
        uploaded (but the newest); each upload queued is one status line. Call it with the run
        lock held (the training harness takes it first).
        """
        if self.remote is None or self.staging is None:
            return []
        remote_entries = self.checkpoints()
        self._evict_uploaded(remote_entries)
        queued = []
        for entry in self._staged_not_uploaded(remote_entries, verify=True, say=True, prefix=self.prefix):
            remote = self.storage.join(self.directory, entry.name)
            log.info("uploading %s, saved locally before the last run stopped (staged in %s)", remote,
                     self.staging)
            self.remote.upload(entry.path, remote, after=lambda r=remote: self.apply_retention(protect=r))  # type: ignore[misc]
            queued.append(remote)
        return queued

    def newest_readable(self, run: str | None = None, *,
                        require_finite: bool = False) -> tuple[ListedCheckpoint, Checkpoint] | None:
        """The newest resumable checkpoint here (staged copies included), read and verified once.

        See catalog.newest_readable: bad ones are skipped and named; ``run`` limits it to one run.
        """
        return catalog.newest_readable(self._resume_candidates(), self.directory, run=run,
                                       dec_key=self.enc_key, require_finite=require_finite)

    # -- restoring ------------------------------------------------------------------------
    def restore(self, path: str, *, callbacks: dict[str, Stateful] | None = None,
                restore_rng: bool = True, ckpt: Checkpoint | None = None) -> dict[str, Any]:
        """Load everything ``path`` holds (or the already read ``ckpt``) into the live objects.

        Returns the file's info. A weights-only file restores the model and says what it lacked.
        """
        self.slot.wait_staged()  # the load changes the live tensors a save in flight may still copy
        if self.sharded is not None and ckpt is None and self.sharded.owns(path):
            found = self.sharded.restore(path, callbacks)
            assert found is not None  # a named checkpoint loads or raises
            return self._restored(found)
        if ckpt is None:
            ckpt = read_checkpoint(path, dec_key=self.enc_key)
        if ckpt.format == "mindspore":  # weights + optimizer state under MindSpore's names
            from torchresume.files import mindspore_io
            return {**mindspore_io.restore(self, path, ckpt.tree), "path": path}
        lacking = restore_tree(ckpt.tree, path, self.model, self.state, callbacks=callbacks,
                               restore_rng=restore_rng)
        return self._restored({**ckpt.info, "path": path, "lacking": lacking})

    def _restored(self, info: dict[str, Any]) -> dict[str, Any]:
        """A restore's info, once the live objects hold it: the run's step count follows it."""
        if isinstance(info.get("global_step"), int):
            self.global_step = info["global_step"]
        if info["lacking"]:
            log.warning("%s holds no %s state (weights-only checkpoint?); those start fresh", info["path"],
                        ", ".join(info["lacking"]))
        return info

    def restore_latest(self, *, callbacks: dict[str, Stateful] | None = None) -> dict[str, Any] | None:
        """Restore the newest valid checkpoint in the directory; None if there is none.

        Resuming claims the directory first (``acquire_lock``): nothing is read, uploaded or
        cleaned while another run writes there."""
        self.acquire_lock()
        if self.sharded is not None:
            info = self.sharded.restore(None, callbacks)
            if info is not None:
                self.retain_after_resume(info["path"])
                return self._restored(info)
            path = self.world.on_rank_0(self._newest_file)  # a one-process checkpoint of the run
            return None if path is None else self.restore(path, callbacks=callbacks)
        self.upload_pending()
        found = self.newest_readable()
        if found is None:
            return None
        entry, ckpt = found
        info = self.restore(entry.path, callbacks=callbacks, ckpt=ckpt)
        self.retain_after_resume(entry.path)
        return info

    def retain_after_resume(self, path: str) -> None:
        """Retention as the run's last save would have applied it (a kill can come between a commit and
        its retention, and a finished run saves nothing more), ``path``, the checkpoint just resumed from,
        protected; the newest is never deleted. Collective under torchrun; call it holding the run lock."""
        self.world.on_rank_0(lambda: self._retain(path))

    def _newest_file(self) -> str | None:
        """The newest readable one-process checkpoint here (a sharded one would have been restored)."""
        from torchresume.sharded_layout import ShardedLayout
        found = self.newest_readable()
        return found[0].path if found is not None and not ShardedLayout.owns(found[0].path) else None

    # -- breakpoints and custom loops -----------------------------------------------------
    def save_breakpoint(self, epoch: int, step: int, global_step: int | None = None, *,
                        reason: BaseException, **state: Any) -> str:
        """The one breakpoint path: save ``{prefix}-{epoch}_{step}_breakpoint.ckpt``, wait, say so.

        Used by guard(), ModelCheckpoint(exception_save=True) and save_on_exception; the
        caller re-raises ``reason``.
        """
        path = self.save(epoch, step, global_step, breakpoint=True, **state)
        assert path is not None  # a breakpoint waits for a running save, never skips
        self.wait()
        log.warning("%s at epoch %d step %d; breakpoint saved to %s", type(reason).__name__, epoch, step, path)
        return path

    @contextmanager
    def guard(self, signals: Sequence[int] = STOP_SIGNALS) -> Iterator[Guard]:
        """Save a breakpoint when the body raises, or a checkpoint when a stop signal arrives."""
        g = Guard(self, signals)
        try:
            with g.stop:
                yield g
        except BaseException as exc:
            if isinstance(exc, (SystemExit, CheckpointWriteError)) or g.position is None:
                raise
            if self.world.distributed:  # the other ranks are not here: a collective save would hang
                log.warning("%s on rank %d: no breakpoint under torchrun (a save needs every rank); "
                            "the rerun resumes from the newest committed checkpoint", type(exc).__name__,
                            self.world.rank)
                raise
            epoch, step, global_step = g.position
            self.save_breakpoint(epoch, step, global_step, reason=exc)
            raise
        finally:
            self.wait()


class Guard:
    """Tracks the last completed step of a custom loop and turns stop signals into saves."""

    def __init__(self, manager: CheckpointManager, signals: Sequence[int]) -> None:
        self.manager = manager
        self.stop = StopSignals(signals)
        self.position: tuple[int, int, int] | None = None

    @property
    def received(self) -> int | None:
        return self.stop.received

    def step_done(self, epoch: int, step: int, global_step: int | None = None) -> None:
        """Call after each completed step; saves and exits (128 + signal) if asked to stop.

        Without ``global_step``, the run's steps are counted from the restored checkpoint's.
        """
        self.manager.global_step = global_step if global_step is not None else self.manager.global_step + 1
        self.position = (epoch, step, self.manager.global_step)
        received = self.manager.world.max(self.stop.received or 0)  # every rank stops at the same step
        if received:
            path = self.manager.save(epoch, step, self.position[2], on_busy="wait")
            self.manager.wait()
            log.warning("%s: saved %s, exiting", signals.name(received), path)
            raise SystemExit(signals.exit_code(received))


# Their homes moved to naming.py and save_slot.py (0.3); importable from here as before.
__all__ = ["ON_BUSY", "CheckpointManager", "Guard", "check_on_busy", "unique_prefix"]
