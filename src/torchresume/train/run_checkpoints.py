"""RunCheckpoints: ModelCheckpoint's books, the same in one process and under torchrun.

``ModelCheckpoint`` opens one when training begins. It claims the directory (the manager's run
lock: rank 0 holds it under torchrun, every rank gets the same refusal), finds what a run resumes
from and restores it through ``RunState``, and saves through one ``CheckpointManager`` for the
run's prefix (and one for ``{prefix}-best`` with ``monitor=``): one file per save in one process,
one sharded checkpoint under torchrun, as the manager chooses from the world. Decisions every rank
must take alike (a save due by the clock, the best metric, a fresh prefix) go through ``World``,
trivial in one process.

Resuming differs by world only in what it reads: under torchrun the newest committed sharded
checkpoint of the run, loaded at any world size (each rank takes back its own old part's RNG
streams, or keeps its seed when the saving job had no rank with its number; the data position,
scheduler and callbacks are alike on every rank), else a one-process file of the run; in one
process the newest readable checkpoint of either kind. A save aborted at its deadline
(``save_deadline_s``, torchrun only) fails alike on every rank; ``on_save_deadline="continue"`` says
so and training goes on, ``"stop"`` raises it.
"""

from __future__ import annotations

import os
from typing import Any

from torchresume import catalog
from torchresume.errors import (
    AsyncSaveError,
    CheckpointConfigError,
    CheckpointNotFoundError,
    SaveDeadlineError,
)
from torchresume.files.directory import is_committed
from torchresume.files.sharded_reader import is_sharded
from torchresume.log import log
from torchresume.manager import CheckpointManager
from torchresume.naming import BEST, best_prefix, parse_name, unique_prefix
from torchresume.retention import KeepBest, RetentionPolicy
from torchresume.save_slot import DEFAULT_SAVE_DEADLINE_S
from torchresume.state.sharded import load_model_state, model_state
from torchresume.storage import resolve
from torchresume.train.checkpoint_config import CheckpointConfig
from torchresume.train.run_state import RunContext
from torchresume.world import World


class RunCheckpoints:
    """The checkpoints of one run in ``directory``; under torchrun every method is collective."""

    def __init__(self, directory: str, config: CheckpointConfig, policies: list[RetentionPolicy],
                 world: World | None) -> None:
        """``world``: this rank's place in a torchrun job (sharded checkpoints, whatever its size), or
        None in one process."""
        self.directory, self.config, self.policies = directory, config, policies
        self.torchrun = world is not None
        self.world = world or World()
        if not self.torchrun:
            refuse_deadline(config)
        self.manager: CheckpointManager | None = None
        self.best_manager: CheckpointManager | None = None
        self._claim: CheckpointManager | None = None  # holds the run lock from the first read to the end

    def lock(self, prefix: str) -> None:
        """Claim the directory (once) before anything of the run is read, uploaded or deleted:
        RunLockedError, naming the holder, when another run has it; then the leftovers of a killed
        writer of ``prefix`` go."""
        if self._claim is None:
            claim = CheckpointManager(self.directory, prefix=prefix, keep=None, layout="file")
            claim.acquire_lock()
            self._claim = claim

    # -- resume ---------------------------------------------------------------------------
    def resume(self, ctx: RunContext, target: Any, run: str | None) -> None:
        """Restore the run from ``target`` ("auto": this directory's run ``run``; a directory or URL
        of checkpoints: its newest; a CheckpointManager (one process): its newest; a file: that one)."""
        if self.torchrun:
            self._resume_sharded(ctx, target, run)
        else:
            self._resume_one_process(ctx, target, run)

    def _resume_one_process(self, ctx: RunContext, target: Any, run: str | None) -> None:
        """"auto" first uploads what a kill left staged under the run's own prefix and keep rule (a
        staged copy older than the run's newest is dropped, never uploaded), then reads. Another
        directory named here is only read."""
        key = self.config.enc_key  # an encrypted run reads with its own key
        named = isinstance(target, str) and target != "auto"
        made: CheckpointManager | None = None  # a manager made here, closed here
        if target == "auto":
            target = made = CheckpointManager(self.directory, prefix=run or "ckpt", keep=self.policies,
                                              enc_key=key)  # the directory may not exist yet
            made.verbose = True
        elif isinstance(target, str) and is_directory_of_runs(target):
            target, run = CheckpointManager(target, keep=None, enc_key=key), None
            made = target
        if not isinstance(target, CheckpointManager):
            ctx.run_state().restore(str(target), ctx, dec_key=key)
            return
        try:
            if not named:  # this run's directory (claimed) or the caller's own manager
                target.upload_pending()  # a kill may have come between a local save and its upload
                target.wait()
            found = target.newest_readable(run, require_finite=True)
        finally:
            if made is not None:
                made.close()
        if found is not None:
            ctx.run_state().restore(found[0].path, ctx, ckpt=found[1])
        elif named:  # a directory named to resume from must hold something to resume
            raise CheckpointNotFoundError(
                f"{target.directory} holds no checkpoint to resume from; name a directory or file "
                "that holds one, or start over with resume='none'")

    def _resume_sharded(self, ctx: RunContext, target: Any, run: str | None) -> None:
        """Sharded first, else a one-process file of the run; ``target`` may name one file. A named
        directory that holds none is an error."""
        if not isinstance(target, str):
            raise CheckpointConfigError("under torchrun, resume must be 'auto', 'none', a directory "
                                        f"of checkpoints or a checkpoint file, got a {type(target).__name__}")
        if target != "auto" and is_sharded(target):  # one sharded checkpoint, named
            parent, name = os.path.split(target.rstrip("/"))
            parsed = parse_name(name)
            source = self._reader(parent or ".", parsed[0] if parsed else "ckpt")
            restore_run(ctx, source, self.world, path=target.rstrip("/"))
            ctx.resumed_prefix = source.prefix
            return
        if target != "auto" and not is_directory_of_runs(target):
            ctx.run_state().restore(target, ctx, dec_key=self.config.enc_key)  # one file, read by every rank
            return
        directory = self.directory if target == "auto" else target
        source = self._reader(directory, run or "ckpt")
        if run is None:
            source.prefix = self._newest_prefix(directory)
        if restore_run(ctx, source, self.world):
            ctx.resumed_prefix = source.prefix
        elif not self._resume_from_file(ctx, directory, run) and target != "auto":
            raise CheckpointNotFoundError(
                f"{directory} holds no checkpoint to resume from; name a directory that "
                "holds one, or start over with resume='none'")

    def _reader(self, directory: str, prefix: str) -> Any:
        """The sharded engine that finds and loads ``prefix``'s checkpoints in ``directory``."""
        from torchresume.distributed import ShardedStore
        cfg = self.config
        return ShardedStore(directory, prefix=prefix, keep=cfg.keep_checkpoint_max or 1, retention=self.policies,
                            enc_key=cfg.enc_key, save_deadline_s=cfg.save_deadline_s)

    def _resume_from_file(self, ctx: RunContext, directory: str, run: str | None) -> bool:
        """A one-process checkpoint of the run (no sharded one yet): rank 0 picks the newest
        readable one, every rank loads it (weights, optimizer, data position, and its RNG streams)."""
        def newest_file() -> str | None:
            found = CheckpointManager(directory, keep=None, enc_key=self.config.enc_key, layout="file").newest_readable(
                run, require_finite=True)
            return found[0].path if found is not None and not is_sharded(found[0].path) else None
        path = self.world.on_rank_0(newest_file)
        if path is None:
            return False
        ctx.run_state().restore(path, ctx, dec_key=self.config.enc_key)
        return True

    def _newest_prefix(self, directory: str) -> str:
        """The prefix of the newest committed sharded checkpoint in ``directory`` (any run but a best copy)."""
        def newest() -> str | None:
            entries = [e for e in catalog.list_checkpoints(directory, verify=False)
                       if e.is_dir and is_sharded(e.path) and e.prefix and not e.prefix.endswith(BEST)]
            return entries[0].prefix if entries else None
        return self.world.on_rank_0(newest) or "ckpt"

    # -- saving ---------------------------------------------------------------------------
    def begin(self, ctx: RunContext, prefix: str) -> None:
        """The managers of this run (``prefix``), each holding the lock (which cleans what a killed
        save of its prefix left), and the uploads a kill left pending."""
        cfg, live = self.config, ctx.run_state()
        def manager(prefix: str, keep: list[RetentionPolicy]) -> CheckpointManager:
            made = CheckpointManager(self.directory, model=live.network, optimizer=live.optimizer,
                                     scheduler=live.scheduler, prefix=prefix, keep=keep,
                                     async_save=bool(cfg.async_save), enc_key=cfg.enc_key, enc_mode=cfg.enc_mode,
                                     saved_network=cfg.saved_network, file_format=cfg.format,
                                     crc_check=cfg.crc_check, on_busy=cfg.on_busy, write_mb_per_s=cfg.write_mb_per_s,
                                     overlap=cfg.overlap, save_deadline_s=cfg.save_deadline_s,
                                     layout="sharded" if self.torchrun else "file")
            made.acquire_lock()
            made.verbose = True
            return made
        self.manager = manager(prefix, self.policies)
        self.manager.upload_pending()
        if cfg.monitor:
            self.best_manager = manager(best_prefix(prefix), [KeepBest(cfg.keep_best_max, cfg.monitor, cfg.mode)])

    def lead(self) -> bool:
        """Whether this process writes the run's own files (the graph): rank 0."""
        return self.world.lead

    def agree(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any (clocks differ per rank)."""
        return self.world.any(flag)

    def agree_value(self, value: float) -> float:
        """Rank 0's ``value`` on every rank (a metric every rank computed alike, up to rounding)."""
        return float(self.world.broadcast(value))

    def save(self, ctx: RunContext, parts: dict[str, Any], append: dict[str, Any], *, step: int,
             best: bool = False, breakpoint: bool = False, reason: BaseException | None = None,
             on_busy: str | None = None) -> str | None:
        """One checkpoint of the run (``best``: into ``{prefix}-best``); None when skipped (on_busy)."""
        manager = self.best_manager if best else self.manager
        assert manager is not None
        state: dict[str, Any] = dict(info=parts["info"], append=append, callbacks=parts["callbacks"],
                                     rng_state=parts["rng"], sampler_state=parts["sampler"])
        if reason is not None:
            return manager.save_breakpoint(ctx.epoch, step, ctx.global_step, reason=reason, **state)
        def save() -> str | None:
            return manager.save(ctx.epoch, step, ctx.global_step, breakpoint=breakpoint, on_busy=on_busy, **state)
        try:
            return save()
        except (SaveDeadlineError, AsyncSaveError) as exc:
            self._past_deadline(exc)
            # the background save before this one was aborted (its error raised now); this one saved nothing yet
            return save() if isinstance(exc, AsyncSaveError) else None

    @property
    def staging(self) -> str | None:
        """The local staging directory of a remote run (uploads still pending live there), or None."""
        return self.manager.staging if self.manager is not None else None

    def _past_deadline(self, exc: SaveDeadlineError | AsyncSaveError) -> None:
        """Training goes on after a save aborted at its deadline (said on every rank) unless
        ``on_save_deadline="stop"``; any other failure is raised."""
        if not isinstance(exc.__cause__ if isinstance(exc, AsyncSaveError) else exc, SaveDeadlineError):
            raise exc
        if self.config.on_save_deadline == "stop":
            raise exc
        log.warning("%s; training continues (on_save_deadline='continue'), the next save tries again", exc)

    def wait(self, timeout: float | None = None) -> None:
        """Wait for background saves and uploads of both managers (TimeoutError after ``timeout`` s)."""
        for manager in (self.manager, self.best_manager):
            if manager is not None:
                try:
                    manager.wait(timeout)
                except AsyncSaveError as exc:
                    self._past_deadline(exc)

    def fresh_prefix(self, base: str) -> str:
        """``base``, or ``base_N`` when the directory already has a run of ``base`` (MindSpore's rule;
        rank 0 decides)."""
        return str(self.world.on_rank_0(lambda: unique_prefix(self.directory, base)))

    def close(self) -> None:
        """Let go of the run lock (the run is over, whatever happened). Under torchrun every rank
        first waits for its background saves (a failure is said, a run's own exception wins); in one
        process a background save still running finishes in its thread (the process waits at exit)."""
        try:
            for manager in (self.manager, self.best_manager):
                if manager is None:
                    continue
                if not self.torchrun:
                    manager.release_lock()
                    continue
                try:
                    manager.close()
                except AsyncSaveError as err:
                    log.warning("%s", err)
        finally:
            if self._claim is not None:
                self._claim.release_lock()
                self._claim = None


def refuse_deadline(config: CheckpointConfig) -> None:
    """A save deadline guards the ranks of a torchrun job against a hung one: one process has no
    other rank to hold, and its save is not abandoned. A deadline asked for here is refused."""
    if config.save_deadline_s not in (None, DEFAULT_SAVE_DEADLINE_S):
        raise CheckpointConfigError(
            f"save_deadline_s={config.save_deadline_s:g} applies to sharded saves under torchrun (a rank whose "
            "write hangs would hold the others); one process has no other rank to hold and does not abandon "
            f"its save: leave save_deadline_s at its default ({DEFAULT_SAVE_DEADLINE_S:g}) or None, or train "
            "under torchrun")
    if config.on_save_deadline != "continue":
        raise CheckpointConfigError(
            f"on_save_deadline={config.on_save_deadline!r} applies to sharded saves under torchrun; one process "
            "has no save deadline: leave on_save_deadline at its default ('continue'), or train under torchrun")


def is_directory_of_runs(path: str) -> bool:
    """A directory that holds checkpoints (not itself a directory checkpoint)."""
    storage, where = resolve(path)
    return storage.isdir(where) and not is_committed(path)


def restore_run(ctx: RunContext, store: Any, world: World, path: str | None = None) -> bool:
    """Collective: load the newest committed checkpoint of ``store`` (a ``ShardedStore``; or the one at
    ``path``) and set ctx's position; False when there is none."""
    state = model_state(ctx.network, ctx.optimizer)
    found = store.restore(state, announce=False, path=path)
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


__all__ = ["RunCheckpoints", "is_directory_of_runs", "refuse_deadline", "restore_run"]
