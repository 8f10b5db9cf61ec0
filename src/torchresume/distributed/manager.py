"""ShardedStore: sharded save/restore under torch.distributed, one global commit.

Call it on every rank. ``save`` is collective: DCP plans the writes (replicated
tensors once, DTensor/FSDP2 shards by their owners), every rank writes its
parts in parallel, the coordinator commits after all ranks reported; then
rank 0 applies retention and every rank passes a barrier. ``restore`` loads the
newest committed checkpoint in place, resharding through DCP when the world
size changed; each rank reads its own old part (``rank_state``), and any other
old rank's only when asked (``RestoreInfo.rank_states``). Without an
initialised process group it works as a single process.

With ``async_save=True`` a save stages the state into reused host buffers
(``staging.StagingBuffers``; DTensor local shards included) and returns; one
background thread (``async_writer.AsyncWriter``) runs the same DCP save on a
separate gloo process group, then retention and a barrier. At most one save is
in flight: the next save, ``restore``, ``wait`` and ``close`` wait for it and
re-raise its failure as AsyncSaveError. ``newest`` names the in-flight
checkpoint only once its background work finished on every rank.

A save has a deadline (``save_deadline_s``): a rank whose part is not written by then fails the
save on every rank with ``SaveDeadlineError`` naming it (the writer abandons its writes), and
nothing is committed, so a hung rank's storage holds the job no longer than that.
"""

from __future__ import annotations

import copy
import os
import posixpath
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.stateful import Stateful

from torchresume import catalog, retention
from torchresume.catalog import ListedCheckpoint
from torchresume.distributed import plan_cache
from torchresume.distributed.save_failures import below_timeout, deadline_line, failure_line, late_ranks, rank_errors
from torchresume.distributed.shard_staging import ShardStager, layout_key, share_of
from torchresume.distributed.writer import PartWriter
from torchresume.errors import (
    CheckpointConfigError,
    CheckpointWriteError,
    CorruptCheckpointError,
    SaveDeadlineError,
    TorchResumeError,
)
from torchresume.files.directory import is_committed
from torchresume.files.sharded_reader import PartReader, RankStates, RestoreFailed, restore_error, sharded_manifest
from torchresume.format.crypto import check_key
from torchresume.log import log
from torchresume.naming import check_prefix, checkpoint_name
from torchresume.retention import KeepLast, RetentionPolicy
from torchresume.save_slot import (
    DEFAULT_SAVE_DEADLINE_S,
    SaveSlot,
    check_on_busy,
    check_save_deadline,
)
from torchresume.storage import resolve
from torchresume.storage.local import LocalStorage
from torchresume.world import World, process_group_up


@dataclass
class RestoreInfo:
    """What ``restore`` loaded: the checkpoint, this rank's own saved state and every saving rank's.

    ``rank_state``: what old rank r saved, on rank r (None on a rank the saving job did not have).
    ``rank_states``: every old rank's, index = old rank; a part this rank did not read during the
    restore is read when indexed, by this rank from storage (never through another rank).
    """

    path: str
    epoch: int
    step: int
    rank_states: Sequence[Any]
    world_size: int
    info: dict[str, Any]
    rank_state: Any = None

    @classmethod
    def read(cls, path: str, doc: dict[str, Any], rank: int, *, dec_key: bytes | None = None,
             known: dict[int, Any] | None = None) -> RestoreInfo:
        """The info of manifest ``doc`` as seen by ``rank`` (``known``: rank parts read already)."""
        info = doc["info"]
        states = RankStates(path, doc, dec_key=dec_key, known=known)
        return cls(path, int(info["epoch"]), int(info["step"]), states, int(info["world_size"]), dict(info),
                   rank_state=states[rank] if rank < len(states) else None)


# Committed checkpoints a restore in this process passed over as damaged: a save of their step replaces
# them. Process-wide: the trainer restores through one manager and saves through another.
_PASSED_OVER: set[str] = set()


@contextmanager
def _single_process_quiet() -> Iterator[None]:
    """Without a process group DCP warns on every call that it assumes one process; that is intended here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


class ShardedStore:
    """Sharded checkpoints of a torch.distributed job in ``directory`` (a path or s3:// URL).

    ``keep``: committed checkpoints of ``prefix`` kept by retention (the newest always).
    ``retention``: policy objects (``torchresume.retention``) used instead of ``KeepLast(keep)``;
    a checkpoint any of them keeps stays.
    ``enc_key``: 16/24/32 bytes; every part is AES-GCM encrypted, and restore reads with it.
    ``threads``: part files each rank writes in parallel (its chunks split by size).
    ``async_save``: ``save`` stages the state into reused host buffers and returns; the write,
    the commit and retention run in a background thread. Call ``close()`` (or ``wait()``) on
    every rank before ``dist.destroy_process_group()``.
    ``overlap`` (with ``async_save``): the copy of the parameters and state of the optimizers
    passed to ``guard_optimizer`` runs beside the next forward and backward; their ``step`` waits for it.
    ``save_deadline_s``: seconds each rank has to write its part of a save (from the start of its
    write; for an async save, in the background); a rank past it makes every rank abort the save
    with ``SaveDeadlineError`` naming it, nothing committed (an async save's is re-raised as
    ``AsyncSaveError`` by the next call). None: no deadline. It must be below the process group's
    timeout (checked here when the group is up and its timeout can be read).

    Every method is collective under torchrun; without a process group it works in one process.

    Example:
        ```python
        from torchresume.app.models import LeNet5
        from torchresume.distributed import ShardedStore

        net = LeNet5()
        mgr = ShardedStore("runs/sharded", prefix="net", keep=2)
        mgr.save({"model": net.state_dict()}, epoch=1, step=10, rank_state={"seen": 320})
        state = {"model": LeNet5().state_dict()}
        found = mgr.restore(state)               # loads in place; None when there is none
        assert found.step == 10 and found.rank_states == [{"seen": 320}]
        mgr.close()
        ```
    """

    def __init__(self, directory: str, *, prefix: str = "ckpt", keep: int = 5, threads: int = 2,
                 async_save: bool = False, retention: Sequence[RetentionPolicy] | None = None,
                 enc_key: bytes | None = None, on_busy: str = "wait", overlap: bool = False,
                 save_deadline_s: float | None = DEFAULT_SAVE_DEADLINE_S) -> None:
        if not isinstance(directory, str) or not directory:
            raise CheckpointConfigError(f"directory must be a non-empty path or URL, got {directory!r}")
        check_prefix(prefix)
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise CheckpointConfigError(f"keep must be an int >= 1 (checkpoints to keep), got {keep!r}")
        self.directory = directory.rstrip("/")
        self.prefix = prefix
        self.keep = keep
        self.retention: list[RetentionPolicy] = list(retention) if retention else [KeepLast(keep)]
        self.enc_key = check_key(enc_key, "AES-GCM", "enc_key") if enc_key is not None else None
        self.threads = threads
        self.save_deadline_s = below_timeout(check_save_deadline(save_deadline_s))
        # At most one save in flight; async saves stage DTensors as their local shards.
        self._stager = ShardStager()
        self.slot = SaveSlot(async_save=async_save, on_busy=on_busy, stager=self._stager if async_save else None,
                             name="torchresume-dist-writer", overlap=overlap)
        self._written: tuple[Any, frozenset[int]] | None = None  # the last async save's layout and this rank's share
        self.async_save = async_save
        self._group: Any = None  # the gloo group of background saves, made on the first one
        self._listing = threading.RLock()  # retention in the writer thread vs listings in the caller's
        self._plan_key = plan_cache.new_key()  # steady saves reuse the plan and metadata (plan_cache.py)

    @property
    def world(self) -> World:
        """The job as it is now (a store may be made before the process group is)."""
        return World.current()

    def guard_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """With ``overlap``: copy ``optimizer``'s parameters and state after ``save`` returned; its
        ``step`` waits until the copy is complete (see ``CheckpointManager.guard_optimizer``)."""
        self.slot.guard_optimizer(optimizer)

    def wait_staged(self) -> None:
        """Return once the save in flight no longer reads the live tensors (before changing them
        other than through a guarded ``optimizer.step``)."""
        self.slot.wait_staged()

    def path_for(self, epoch: int, step: int, breakpoint: bool = False) -> str:
        storage, _ = resolve(self.directory)
        return storage.join(self.directory, checkpoint_name(self.prefix, epoch, step, breakpoint))

    def save(self, state: dict[str, Any], epoch: int, step: int, *, rank_state: Any = None,
             info: dict[str, Any] | None = None, append: dict[str, Any] | None = None,
             on_busy: str | None = None, breakpoint: bool = False) -> str | None:
        """Collective: write ``state`` sharded plus this rank's ``rank_state``; returns the path.

        ``append``: extra key/values kept in the manifest's ``append`` (shown by ``inspect``).
        Synchronous: returns once the checkpoint is committed and retention ran. With
        ``async_save``: first waits for the previous background save (re-raising its failure as
        AsyncSaveError), then copies ``state`` and ``rank_state`` and returns; the path is
        committed later, when the background save finished (``wait``/``close``/the next save).
        With ``on_busy="skip"`` (this call's, else the manager's; every rank passes the same) a save
        due while any rank's background save runs is skipped by every rank alike (None).
        """
        if not isinstance(state, dict):
            raise CheckpointConfigError(f"state must be a dict of state_dicts (e.g. {{'model': model.state_dict()}}), "
                                        f"got {type(state).__name__}")
        for name, value in (("epoch", epoch), ("step", step)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise CheckpointConfigError(f"{name} must be an int >= 0, got {value!r}")
        path = self.path_for(epoch, step, breakpoint)
        skip = check_on_busy(on_busy or self.slot.on_busy) == "skip"
        if self.slot.async_save and skip and self.world.any(self.slot.saving is not None):
            log.warning("skipped saving %s: a rank's background save of %s is still running (on_busy='skip'; "
                        "save less often to keep every save)", path, self.slot.saving or "the previous checkpoint")
            return None
        self.slot.claim(path, "wait")  # buffers and the gloo group are free again; a failure raises here
        if self.world.broadcast(self._clear(path) if self.world.lead else None):
            return path  # this step is already committed: keep it rather than delete a good checkpoint
        full_info = {**(info or {}), "epoch": epoch, "step": step, "prefix": self.prefix}
        if self.async_save and self._group is None and process_group_up():  # collective: the first async save
            self._group = dist.new_group(backend="gloo")
        group = self._group if self.async_save else None
        layout = None
        if group is not None:  # every rank stages only what its plan writes, once the plan is known
            state = {k: v.state_dict() if isinstance(v, Stateful) else v for k, v in state.items()}
            layout = layout_key(state)
            self._stager.share = self._agreed_share(layout, group)
        own, full_info, append = copy.deepcopy(rank_state), copy.deepcopy(full_info), copy.deepcopy(append)
        self.slot.run(path, state, lambda snapshot, pace: self._write(snapshot, path, own, full_info, append,
                                                                       group=group, layout=layout))
        return path

    def _agreed_share(self, layout: Any, group: Any) -> frozenset[int] | None:
        """Collective: this rank's share of the last save when every rank's state has that save's
        layout (the cached plan then holds on every rank), else None (stage everything)."""
        mine = self._written[1] if self._written is not None and self._written[0] == layout else None
        flag = torch.tensor([0 if mine is None else 1])
        dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=group)
        return mine if int(flag.item()) == 1 else None

    def _write(self, state: dict[str, Any], path: str, rank_state: Any, info: dict[str, Any],
               append: dict[str, Any] | None, *, group: Any, layout: Any = None) -> None:
        """The collective DCP save into ``path``, the commit, then retention and a barrier (on ``group``).

        ``layout``: the staged state's ``layout_key`` (background saves under torchrun): once
        committed, this rank's share of it is kept for the next save's staging."""
        writer = PartWriter(path, threads=self.threads, rank_state=rank_state, info=info, append=append,
                            enc_key=self.enc_key, lean=True, deadline_s=self.save_deadline_s)
        staged = self._stager.last if layout is not None else None
        planner = plan_cache.cached_planner(self._plan_key, staged.placeholders if staged else frozenset())
        self._written = None
        try:
            with _single_process_quiet():
                dcp.save(state, storage_writer=writer, planner=planner, process_group=group,
                         no_dist=not process_group_up())
        except CheckpointException as exc:
            self._failed(path, exc, late_ranks(exc), group)
        except SaveDeadlineError as exc:  # one process: DCP runs write_data without its collectives
            self._failed(path, exc, [0], group)
        except (dist.DistError, RuntimeError) as exc:  # DCP wraps rank errors; these are from collectives
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointWriteError(f"{path}: sharded save failed: the process group broke ({first}); "
                                       "nothing was committed; restart the job to resume from the "
                                       "newest committed checkpoint") from None
        if layout is not None:
            self._written = share_of(layout, self._stager.buffers, planner)
        try:
            if self.world.lead:  # a sync save's deletes run in the slot's thread (an async save is already there)
                if group is None and not self.slot.async_save:
                    self.slot.after(lambda: self._retain(path), f"retention after {path}")
                else:
                    self._retain(path)
        finally:
            self.world.barrier(group)  # every rank, whatever rank 0 met

    def _failed(self, path: str, exc: BaseException, late: list[int], group: Any) -> NoReturn:
        """Every rank: the save of ``path`` failed (DCP's outcome, alike on every rank); rank 0 removes
        its parts. Ranks past the deadline: SaveDeadlineError, naming the newest checkpoint kept."""
        if self.world.lead:
            self._discard(path)
        if late:
            assert self.save_deadline_s is not None  # only a writer with a deadline reports one
            kept = self.world.broadcast(self._newest_kept() if self.world.lead else None, group)  # every rank is here
            others = rank_errors(exc, skip=late) if isinstance(exc, CheckpointException) else ""
            raise SaveDeadlineError(deadline_line(path, late, self.save_deadline_s, kept, others)) from None
        assert isinstance(exc, CheckpointException)
        raise CheckpointWriteError(failure_line(path, exc)) from None

    def _newest_kept(self) -> str:
        """Rank 0, after a failed save: which checkpoint stays the newest, in words (never raised:
        the other ranks wait for the answer)."""
        try:
            entries = self.checkpoints()
        except Exception as exc:
            log.warning("could not list %s after a failed save: %s", self.directory, exc)
            return "the previous checkpoint stays the newest"
        return f"{entries[0].path} stays the newest" if entries else "there is no earlier checkpoint"

    def _retain(self, path: str) -> None:
        """Retention after ``path``'s commit; a failure is said, never raised (it happens on rank 0
        alone, and a committed checkpoint stays good: older ones are kept)."""
        try:
            self.apply_retention(protect=path)
        except Exception as exc:
            log.warning("%s is committed but retention failed: %s; older checkpoints were kept", path, exc)

    @property
    def saving(self) -> str | None:
        """The checkpoint a background save is writing now (this rank's view), or None."""
        return self.slot.saving

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the background save (every rank calls it); re-raise its failure as AsyncSaveError.

        With ``timeout`` (seconds) a TimeoutError is raised when it is still running then.
        """
        self.slot.wait(timeout)

    def _clear(self, path: str) -> bool:
        """Whether ``path`` is already a committed checkpoint; else remove what an unfinished save left there."""
        storage, where = resolve(path)
        if isinstance(storage, LocalStorage) and os.path.islink(where):
            # A link is never this run's checkpoint (listing skips links) and is_committed would follow
            # it to another checkpoint: remove the link itself, never its target, and save here.
            log.warning("%s is a symbolic link, not a checkpoint of this run; removing the link (not its "
                        "target) and saving there", path)
            storage.delete(where)
            return False
        if not storage.exists(where):
            return False
        if path in _PASSED_OVER:
            log.warning("%s is the damaged checkpoint the restore passed over; replacing it", path)
            _PASSED_OVER.discard(path)
        elif is_committed(path):
            log.info("%s is already committed (this step was saved before); keeping it", path)
            return True
        else:
            log.warning("%s holds an unfinished save's parts; replacing them", path)
        storage.delete(where)
        return False

    def _discard(self, path: str) -> None:
        """Remove the parts a failed save left (never a committed checkpoint); every rank has stopped writing."""
        storage, where = resolve(path)
        try:
            if storage.exists(where) and not is_committed(path):
                storage.delete(where)
        except OSError as exc:
            log.warning("could not remove the parts of the failed save %s: %s", path, exc)

    def remove_unfinished(self) -> list[str]:
        """``catalog.remove_unfinished`` of this prefix (one rank, with the run lock held)."""
        return catalog.remove_unfinished(self.directory, self.prefix)

    def checkpoints(self) -> list[ListedCheckpoint]:
        """This prefix's committed sharded checkpoints, newest first (their manifests only: no part of
        any rank is opened, so listing costs the same at any world size but the manifest's length)."""
        return [e for e in self._listed() if e.valid]

    def _listed(self) -> list[ListedCheckpoint]:
        """This prefix's committed directories, newest first, a damaged manifest's too (invalid)."""
        with self._listing:  # never while background retention is deleting
            storage, where = resolve(self.directory)
            if not storage.isdir(where):
                return []
            entries = catalog.list_checkpoints(self.directory, verify=False, prefix=self.prefix, headers=False,
                                               sharded_only=True)
            return [e for e in entries if e.valid or e.is_dir]

    def apply_retention(self, protect: str | None = None) -> list[str]:
        """Delete checkpoints no retention policy keeps (never the newest, never ``protect``)."""
        if not self.retention:  # keep everything
            return []
        with self._listing:
            return retention.apply(self.checkpoints(), self.retention, protect)

    def committed(self, *, damaged: bool = False) -> list[str]:
        """Collective: the committed checkpoints, newest first, as rank 0 sees them (``damaged``: with
        those whose manifest does not check, which a restore tries and passes over, saying so)."""
        local = None
        if self.world.lead:
            busy = self.saving  # committed maybe, but not yet finished on every rank
            local = [e.path for e in self._listed() if (e.valid or damaged) and e.path != busy]
        return list(self.world.broadcast(local))

    def newest(self) -> str | None:
        """Collective: the newest committed checkpoint, as rank 0 sees it."""
        paths = self.committed()
        return paths[0] if paths else None

    def restore(self, state: dict[str, Any], *, announce: bool = True, path: str | None = None) -> RestoreInfo | None:
        """Collective: load the newest committed checkpoint that reads and verifies (or the committed
        one at ``path``) into ``state`` in place; None when there is none.

        A damaged newest (a checksum, a part or chunk missing) is skipped with a warning for the next
        older one, loaded over the whole state (a chunk that failed midway leaves nothing of that
        checkpoint behind), and a later save of its step replaces it; if none reads, DamagedRunError.
        Any other failure (a state that does not fit the checkpoint, a wrong key) is raised. A
        background save still running is waited for first (its failure raises AsyncSaveError).
        """
        self.wait()
        if path is None:
            path, reader = self._newest_that_loads(state)
            if path is None or reader is None:
                return None
        else:
            reader = self._load(state, path)
        restored = RestoreInfo.read(path, reader.doc, self.world.rank, dec_key=self.enc_key, known=reader.own)
        if announce:  # Model.train says it once, with the position
            log.info("resumed from %s", path)
        return restored

    def _newest_that_loads(self, state: dict[str, Any]) -> tuple[str | None, PartReader | None]:
        """Collective: load the committed checkpoints newest first until one loads on every rank."""
        damaged: list[tuple[str, str]] = []
        for path in self.committed(damaged=True):
            try:
                reader = self._load(state, path)
            except RestoreFailed:
                raise  # not damage the reader found (a state that does not fit, memory): never skipped
            except CorruptCheckpointError as exc:  # raised alike on every rank: every rank tries the next
                damaged.append((posixpath.basename(path.rstrip("/")), str(exc)))
                _PASSED_OVER.add(path)
                continue
            if self.world.lead:
                catalog.say_skipped(damaged)
            return path, reader
        if damaged:
            raise catalog.damaged_run(self.directory, damaged)
        return None, None

    def _load(self, state: dict[str, Any], path: str) -> PartReader:
        """Collective: ``path`` into ``state``; a failure on any rank is raised on every rank."""
        # Each rank plans its own reads (a load plan needs no coordinator: DCP's would gather every
        # rank's plan to rank 0 and scatter it back) and reads its own old part; then one small
        # all-gather raises the first failing rank's error on every rank.
        reader = PartReader(path, dec_key=self.enc_key, rank_part=True, rank=self.world.rank)
        error: Exception | None = None
        try:
            reader.prepare()  # a damaged manifest or metadata: its typed error (DCP would swallow it)
            with _single_process_quiet():
                dcp.load(state, storage_reader=reader, no_dist=True)
        except CheckpointException as exc:
            error = restore_error(path, exc)
        except Exception as exc:  # raised outside DCP's steps: still on every rank, never a hang
            error = exc if isinstance(exc, TorchResumeError) else RestoreFailed.wrapping(path, exc)
        self.world.raise_on_every_rank(error)
        return reader

    def rank_states(self, path: str) -> RestoreInfo:
        """``path``'s info and every saving rank's ``rank_state``, its shards left unread: each rank
        reads the manifest and its own part (no collective; other parts when indexed)."""
        return RestoreInfo.read(path, sharded_manifest(path, self.enc_key), self.world.rank, dec_key=self.enc_key)

    def close(self) -> None:
        """Wait for the background save (re-raising its failure), then free the staging buffers
        and the cached save plan."""
        try:
            self.slot.close()
        finally:
            plan_cache.forget(self._plan_key)
            self._written = None  # its plan is forgotten: the next save stages everything


class DistributedCheckpointManager(ShardedStore):
    """Deprecated (0.4): ``torchresume.CheckpointManager`` is the one manager in one process and
    under torchrun; it picks the sharded layout by itself. Kept one release, as it was."""

    def __init__(self, directory: str, **options: Any) -> None:
        warnings.warn("DistributedCheckpointManager is deprecated: use torchresume.CheckpointManager(directory, "
                      "model=..., optimizer=...), the same manager in one process and under torchrun (it writes "
                      "sharded checkpoints when the world has several ranks); see CHANGELOG.md, 0.4",
                      DeprecationWarning, stacklevel=2)
        super().__init__(directory, **options)

