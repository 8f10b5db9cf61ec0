"""FileCheckpoints: ModelCheckpoint's storage in one process, one file (or directory) per checkpoint.

``ModelCheckpoint`` picks this strategy when training begins without torchrun (its twin for
torchrun is ``sharded_checkpoints.py``; both have the same methods). It keeps a
``CheckpointManager`` for the run's prefix (and one for ``{prefix}-best`` with ``monitor=``),
holds the run lock, finds what a run resumes from and restores it through ``RunState``.
"""

from __future__ import annotations

from typing import Any

from torchresume import run_lock
from torchresume.errors import CheckpointConfigError, CheckpointNotFoundError
from torchresume.files.directory import is_committed
from torchresume.manager import CheckpointManager
from torchresume.naming import best_prefix, unique_prefix
from torchresume.retention import KeepBest, RetentionPolicy
from torchresume.save_slot import DEFAULT_SAVE_DEADLINE_S
from torchresume.storage import is_remote, resolve, staging_dir
from torchresume.train.callback import RunContext
from torchresume.train.checkpoint_config import CheckpointConfig


class FileCheckpoints:
    """One process's checkpoints of one run in ``directory``."""

    def __init__(self, directory: str, config: CheckpointConfig, policies: list[RetentionPolicy]) -> None:
        self.directory, self.config, self.policies = directory, config, policies
        refuse_deadline(config)
        self.manager: CheckpointManager | None = None
        self.best_manager: CheckpointManager | None = None
        self._locked = False  # this object's own hold of the run lock (the managers hold theirs)

    # -- resume ---------------------------------------------------------------------------
    def lock(self) -> None:
        """Take the run lock of ``directory`` (once): before anything of the run is read, uploaded or
        deleted (RunLockedError, naming the holder, when another run has it)."""
        if not self._locked:
            staging = staging_dir(self.directory) if is_remote(self.directory) else None
            run_lock.acquire(self.directory, local_dir=staging)
            self._locked = True

    def resume(self, ctx: RunContext, target: Any, run: str | None) -> None:
        """Restore the run from ``target`` ("auto": this directory's run ``run``; a directory or URL
        of checkpoints: its newest; a CheckpointManager: its newest; a file: that one).

        "auto" takes the run lock first, then uploads what a kill left staged under the run's
        own prefix and keep rule (a staged copy older than the run's newest is dropped, never
        uploaded), then reads. Another directory named here is only read."""
        key = self.config.enc_key  # an encrypted run reads with its own key
        named = isinstance(target, str) and target != "auto"
        made: CheckpointManager | None = None  # a manager made here, closed here
        if target == "auto":
            self.lock()
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
            if not named:  # this run's directory (locked) or the caller's own manager
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

    # -- saving ---------------------------------------------------------------------------
    def begin(self, ctx: RunContext, prefix: str) -> None:
        """The managers of this run (``prefix``), the run lock, and uploads a kill left pending."""
        cfg, live = self.config, ctx.run_state()
        common: dict[str, Any] = dict(model=live.network, optimizer=live.optimizer, scheduler=live.scheduler,
                                      async_save=cfg.async_save, enc_key=cfg.enc_key,
                                      enc_mode=cfg.enc_mode, saved_network=cfg.saved_network,
                                      file_format=cfg.format, crc_check=cfg.crc_check,
                                      on_busy=cfg.on_busy, write_mb_per_s=cfg.write_mb_per_s,
                                      overlap=cfg.overlap)
        self.lock()
        self.manager = CheckpointManager(self.directory, prefix=prefix, keep=self.policies, **common)
        self.manager.acquire_lock()
        self.manager.verbose = True
        self.manager.upload_pending()
        if cfg.monitor:
            self.best_manager = CheckpointManager(
                self.directory, prefix=best_prefix(prefix),
                keep=[KeepBest(cfg.keep_best_max, cfg.monitor, cfg.mode)], **common)

    def lead(self) -> bool:
        """Whether this process writes the run's own files (the graph): always, in one process."""
        return True

    def agree(self, flag: bool) -> bool:
        """A decision every process takes alike: one process decides alone."""
        return flag

    def agree_value(self, value: float) -> float:
        return value

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
        return manager.save(ctx.epoch, step, ctx.global_step, breakpoint=breakpoint, on_busy=on_busy, **state)

    @property
    def staging(self) -> str | None:
        """The local staging directory of a remote run (uploads still pending live there), or None."""
        return self.manager.staging if self.manager is not None else None

    def wait(self, timeout: float | None = None) -> None:
        """Wait for background saves and uploads of both managers (TimeoutError after ``timeout`` s)."""
        for manager in (self.manager, self.best_manager):
            if manager is not None:
                manager.wait(timeout)

    def fresh_prefix(self, base: str) -> str:
        """``base``, or ``base_N`` when the directory already has a run of ``base`` (MindSpore's rule)."""
        return unique_prefix(self.directory, base)

    def close(self) -> None:
        """Let go of the run lock (the run is over, whatever happened); a background save still
        running finishes in its thread (the process waits for it at exit)."""
        for manager in (self.manager, self.best_manager):
            if manager is not None:
                manager.release_lock()
        if self._locked:
            self._locked = False
            run_lock.release(self.directory)


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


__all__ = ["FileCheckpoints", "is_directory_of_runs"]
