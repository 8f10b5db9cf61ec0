"""ShardedCheckpoints: ModelCheckpoint's storage under torchrun, one sharded checkpoint per save.

``ModelCheckpoint`` picks this strategy when training begins under torchrun (its twin for one
process is ``file_checkpoints.py``; both have the same methods, and both save through
``CheckpointManager``). A save is collective, through the manager's sharded layout: the model and
optimizer state go through DCP (the DDP replica written once), and each rank's own state (its RNG
streams; the data position, scheduler and callback state, identical on every rank) is its own part
of the same checkpoint. Restore loads the newest committed checkpoint at any world size;
each rank takes back the RNG streams of the old rank with its number (exact at the same world
size) and the data position (world-size free, alike on every rank) from its own old part, or
from old rank 0's when the saving job had no rank with its number; no rank reads another's part
otherwise, and nothing of it passes through rank 0. Decisions every rank must
take alike (a save due by the clock, the best metric, the run lock held by rank 0) are agreed
by collectives. Options the sharded path cannot honour are refused before training starts
(``train/torchrun_options.py``). A save aborted at its deadline (``save_deadline_s``: a rank did
not write its part in time) fails alike on every rank; ``on_save_deadline="continue"`` says so and
training goes on (the next save tries again), ``"stop"`` raises it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from torchresume import catalog, run_lock
from torchresume.distributed import ShardedStore
from torchresume.errors import (
    AsyncSaveError,
    CheckpointConfigError,
    CheckpointNotFoundError,
    SaveDeadlineError,
)
from torchresume.files.sharded_reader import is_sharded
from torchresume.log import log
from torchresume.manager import CheckpointManager
from torchresume.naming import BEST, best_prefix, parse_name, unique_prefix
from torchresume.retention import KeepBest, RetentionPolicy
from torchresume.state.sharded import load_model_state, model_state
from torchresume.train.callback import RunContext
from torchresume.train.checkpoint_config import CheckpointConfig
from torchresume.train.file_checkpoints import is_directory_of_runs
from torchresume.world import on_rank_0

if TYPE_CHECKING:
    from torchresume.world import World



class ShardedCheckpoints:
    """The checkpoints of one torchrun run in ``directory``; every method is collective."""

    def __init__(self, directory: str, config: CheckpointConfig, policies: list[RetentionPolicy],
                 world: World) -> None:
        self.directory, self.config, self.policies, self.world = directory, config, policies, world
        self.manager: CheckpointManager | None = None  # the sharded layout's
        self.best_manager: CheckpointManager | None = None
        self._locked = False
        self._taken = False  # every rank: the lock was taken for the job (by rank 0)
        self._run_lock: run_lock.RunLock | None = None  # rank 0's

    def _manager(self, directory: str, prefix: str, policies: list[RetentionPolicy]) -> ShardedStore:
        cfg = self.config
        return ShardedStore(directory, prefix=prefix, keep=cfg.keep_checkpoint_max or 1,
                                            async_save=bool(cfg.async_save), retention=policies,
                                            enc_key=cfg.enc_key, on_busy=cfg.on_busy, overlap=cfg.overlap,
                                            save_deadline_s=cfg.save_deadline_s)

    # -- resume ---------------------------------------------------------------------------
    def resume(self, ctx: RunContext, target: Any, run: str | None) -> None:
        """Restore ``run``'s newest committed checkpoint in ``target`` ("auto": this directory):
        sharded first, else a one-process file of the run; ``target`` may name one file. A named
        directory that holds none is an error."""
        if not isinstance(target, str):
            raise CheckpointConfigError("under torchrun, resume must be 'auto', 'none', a directory "
                                        f"of checkpoints or a checkpoint file, got a {type(target).__name__}")
        if target != "auto" and is_sharded(target):  # one sharded checkpoint, named
            parent, name = os.path.split(target.rstrip("/"))
            parsed = parse_name(name)
            source = self._manager(parent or ".", parsed[0] if parsed else "ckpt", self.policies)
            restore_run(ctx, source, self.world, path=target.rstrip("/"))
            ctx.resumed_prefix = source.prefix
            return
        if target != "auto" and not is_directory_of_runs(target):
            ctx.run_state().restore(target, ctx, dec_key=self.config.enc_key)  # one file, read by every rank
            return
        directory = self.directory if target == "auto" else target
        source = self._manager(directory, run or "ckpt", self.policies)
        if run is None:
            source.prefix = _newest_prefix(directory)
        if restore_run(ctx, source, self.world):
            ctx.resumed_prefix = source.prefix
        elif not self._resume_from_file(ctx, directory, run) and target != "auto":
            raise CheckpointNotFoundError(
                f"{directory} holds no checkpoint to resume from; name a directory that "
                "holds one, or start over with resume='none'")

    def _resume_from_file(self, ctx: RunContext, directory: str, run: str | None) -> bool:
        """A one-process checkpoint of the run (no sharded one yet): rank 0 picks the newest
        readable one, every rank loads it (weights, optimizer, data position, and its RNG streams)."""
        def newest_file() -> str | None:
            found = CheckpointManager(directory, keep=None, enc_key=self.config.enc_key, layout="file").newest_readable(
                run, require_finite=True)
            return found[0].path if found is not None and not is_sharded(found[0].path) else None
        path = on_rank_0(newest_file)
        if path is None:
            return False
        ctx.run_state().restore(path, ctx, dec_key=self.config.enc_key)
        return True

    # -- saving ---------------------------------------------------------------------------
    def begin(self, ctx: RunContext, prefix: str) -> None:
        """The managers of this run (``prefix``, sharded) and the run lock (held by rank 0 for the job):
        each manager's lock removes what saves of its prefix interrupted by a kill left."""
        self.lock()
        cfg, live = self.config, ctx.run_state()
        def manager(prefix: str, keep: list[RetentionPolicy]) -> CheckpointManager:
            made = CheckpointManager(self.directory, model=ctx.network, optimizer=live.optimizer,
                                     scheduler=live.scheduler, prefix=prefix, keep=keep,
                                     async_save=bool(cfg.async_save), enc_key=cfg.enc_key, on_busy=cfg.on_busy,
                                     overlap=cfg.overlap, save_deadline_s=cfg.save_deadline_s, layout="sharded")
            made.acquire_lock()
            return made
        self.manager = manager(prefix, self.policies)
        if cfg.monitor:
            self.best_manager = manager(best_prefix(prefix), [KeepBest(cfg.keep_best_max, cfg.monitor, cfg.mode)])

    def lock(self) -> None:
        """Take the run lock (once; collective) before anything of the run is read or deleted."""
        if not self._taken:
            self._lock()

    def _lock(self) -> None:
        """Rank 0 takes the directory's run lock; every rank raises the same RunLockedError if held."""
        def take() -> None:
            self._run_lock = run_lock.acquire(self.directory)
        on_rank_0(take)
        self._locked = self.world.rank == 0
        self._taken = True

    def lead(self) -> bool:
        """Whether this rank writes the run's own files (the graph): rank 0."""
        return self.world.rank == 0

    def agree(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any (clocks differ per rank)."""
        box = torch.tensor([int(flag)], device=self.world.device)
        dist.all_reduce(box, op=dist.ReduceOp.MAX)
        return bool(box.item())

    def agree_value(self, value: float) -> float:
        """Rank 0's ``value`` on every rank (a metric every rank computed alike, up to rounding)."""
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return float(box[0])

    def save(self, ctx: RunContext, parts: dict[str, Any], append: dict[str, Any], *, step: int,
             best: bool = False, breakpoint: bool = False, reason: BaseException | None = None,
             on_busy: str | None = None) -> str | None:
        """One collective save (``best``: into ``{prefix}-best``); None when every rank skipped it."""
        manager = self.best_manager if best else self.manager
        assert manager is not None
        def save() -> str | None:
            return manager.save(ctx.epoch, step, ctx.global_step, breakpoint=breakpoint, info=parts["info"],
                                append=append, callbacks=parts["callbacks"], rng_state=parts["rng"],
                                sampler_state=parts["sampler"], on_busy=on_busy)
        try:
            path = save()
        except (SaveDeadlineError, AsyncSaveError) as exc:
            self._past_deadline(exc)
            # the background save before this one was aborted (its error raised now); this one saved nothing yet
            path = save() if isinstance(exc, AsyncSaveError) else None
        background = manager.slot.async_save
        if path is not None:
            log.info("%s %s", "saving" if background else "saved", path +
                     (" in the background (committed when every rank finished)" if background else ""))
        return path

    @property
    def staging(self) -> str | None:
        return None  # sharded parts are written where they live, never staged locally

    def _past_deadline(self, exc: SaveDeadlineError | AsyncSaveError) -> None:
        """Training goes on after a save aborted at its deadline (said on every rank) unless
        ``on_save_deadline="stop"``; any other failure is raised."""
        if not isinstance(exc.__cause__ if isinstance(exc, AsyncSaveError) else exc, SaveDeadlineError):
            raise exc
        if self.config.on_save_deadline == "stop":
            raise exc
        log.warning("%s; training continues (on_save_deadline='continue'), the next save tries again", exc)

    def wait(self, timeout: float | None = None) -> None:
        for manager in (self.manager, self.best_manager):
            if manager is not None:
                try:
                    manager.wait(timeout)
                except AsyncSaveError as exc:
                    self._past_deadline(exc)

    def fresh_prefix(self, base: str) -> str:
        """``base``, or ``base_N`` when the directory already has a run of ``base`` (rank 0 decides)."""
        return str(on_rank_0(lambda: unique_prefix(self.directory, base)))

    def close(self) -> None:
        """Wait for background saves (every rank; a failure is said, a run's own exception wins),
        then let go of the run lock."""
        try:
            for manager in (self.manager, self.best_manager):
                if manager is not None:
                    try:
                        manager.close()
                    except AsyncSaveError as err:
                        log.warning("%s", err)
        finally:
            self._taken = False
            if self._locked:
                self._locked, self._run_lock = False, None
                run_lock.release(self.directory)


def _newest_prefix(directory: str) -> str:
    """The prefix of the newest committed sharded checkpoint in ``directory`` (any run but a best copy)."""
    def newest() -> str | None:
        entries = [e for e in catalog.list_checkpoints(directory, verify=False)
                   if e.is_dir and is_sharded(e.path) and e.prefix and not e.prefix.endswith(BEST)]
        return entries[0].prefix if entries else None
    return on_rank_0(newest) or "ckpt"


def restore_run(ctx: RunContext, manager: ShardedStore, world: World,
                path: str | None = None) -> bool:
    """Collective: load the newest committed checkpoint of ``manager`` (or the one at ``path``) and
    set ctx's position; False when there is none."""
    state = model_state(ctx.network, ctx.optimizer)
    found = manager.restore(state, announce=False, path=path)
    if found is None:
        return False
    load_model_state(ctx.network, ctx.optimizer, state)
    # The data position, scheduler and callbacks are alike on every rank: each rank takes its own old
    # part's copy; a rank the saving job did not have reads old rank 0's itself (restore read it).
    own = found.rank_state if world.rank < found.world_size else None
    shared = (own if world.rank < found.world_size else found.rank_states[0]) or {}
    parts = {k: shared[k] for k in ("scheduler", "sampler", "callbacks") if shared.get(k) is not None}
    if own and own.get("rng"):
        parts["rng"] = own["rng"]
    ctx.run_state().restore_parts(parts, found.path, ctx, found.info)
    if found.world_size != world.size:
        log.info("resumed at %d ranks from a checkpoint of %d ranks: the data continues exactly "
                 "once; rank r < %d continues old rank r's RNG streams, any other keeps its seed",
                 world.size, found.world_size, found.world_size)
    return True


__all__ = ["ShardedCheckpoints", "model_state", "restore_run"]
