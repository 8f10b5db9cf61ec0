"""DistributedModelCheckpoint: ModelCheckpoint's schedule, saved as one sharded checkpoint per step.

Under torchrun every rank holds one of these (``train.distributed.prepare``
makes it from the user's ModelCheckpoint). A save is collective, through
``torchresume.distributed.DistributedCheckpointManager``: the model and
optimizer state go through DCP (the DDP replica written once), and each
rank's own state (its RNG streams; the data position and callback state,
identical on every rank) is its ``rank_state`` inside the same checkpoint.
Restore loads the newest committed checkpoint at any world size; each rank
takes back the RNG streams of the old rank with its number (exact at the same
world size) and everyone takes rank 0's data position (world-size free).
With ``CheckpointConfig(async_save=True)`` each save is staged and written in
the background (see DistributedCheckpointManager); the next save, the end of
training and the stop path wait for it. Options the sharded path cannot honour yet
(``on_busy="skip"``, ``monitor=``, ...) never reach it: ``train.distributed.prepare`` refuses
them first, on every rank alike (``train/torchrun_options.py``).
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from torchresume.distributed import DistributedCheckpointManager
from torchresume.errors import AsyncSaveError, CheckpointConfigError
from torchresume.log import log
from torchresume.state import rng
from torchresume.train.callback import RunContext
from torchresume.train.distributed import World
from torchresume.train.model_checkpoint import ModelCheckpoint


class TrainingCheckpoints(DistributedCheckpointManager):
    """The manager as Model's stop path uses it: ``wait`` for the background save, no local staging."""

    staging = None


class DistributedModelCheckpoint(ModelCheckpoint):
    """Collective saves on the original callback's schedule; restores before the first step."""

    def __init__(self, original: ModelCheckpoint, resume: str | None, world: World) -> None:
        super().__init__(original.base_prefix, original.directory, original.config)
        self.original, self.resume, self.world = original, resume, world
        self.dist_manager: TrainingCheckpoints | None = None

    @property
    def state_key(self) -> str:
        return "ModelCheckpoint"

    def _directory(self) -> str:
        if self.resume in (None, "none", "auto"):
            return self.directory
        return str(self.resume)

    def on_train_begin(self, ctx: RunContext) -> None:
        keep = self.config.keep_checkpoint_max or 1  # the policies below decide; the int is unused then
        key = self.config.enc_key
        self.dist_manager = TrainingCheckpoints(self.directory, prefix=self.prefix, keep=keep,
                                                async_save=bool(self.config.async_save),
                                                retention=self._policies(), enc_key=key)
        self.manager = self.dist_manager  # type: ignore[assignment]  # what Model's stop path waits on
        if self.resume not in (None, "none"):
            source = self.dist_manager if self._directory() == self.directory else \
                DistributedCheckpointManager(self._directory(), prefix=self.prefix, keep=keep, enc_key=key)
            if not restore_run(ctx, source, self.world) and self.resume != "auto":
                from torchresume.errors import CheckpointNotFoundError
                raise CheckpointNotFoundError(
                    f"{self._directory()} holds no checkpoint to resume from; name a directory that "
                    "holds one, or start over with resume='none'")
        if self.world.rank == 0:
            self._write_graph(ctx.network)
        self._last_save_time = time.monotonic()

    def on_train_step_end(self, ctx: RunContext) -> None:
        cfg = self.config
        if cfg.save_checkpoint_steps:
            due = ctx.global_step % cfg.save_checkpoint_steps == 0
        else:  # clocks differ per rank: save when any rank's period is over
            late = time.monotonic() - self._last_save_time >= cfg.save_checkpoint_seconds
            flag = torch.tensor([int(late)], device=self.world.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            due = bool(flag.item())
        if due:
            self.save(ctx)

    def on_train_end(self, ctx: RunContext) -> None:
        if self.dist_manager is not None:
            self.save_if_unsaved(ctx)
            self.dist_manager.close()

    def on_exception(self, ctx: RunContext, exc: BaseException) -> None:
        if self.dist_manager is not None and not isinstance(exc, SystemExit):
            log.warning("no breakpoint checkpoint under torchrun (a save needs every rank, and one "
                        "failed); the newest committed checkpoint resumes")
            try:
                self.dist_manager.close()  # waits for a background save still in flight
            except AsyncSaveError as err:  # the run's own exception is the one to raise
                log.warning("%s", err)

    def save(self, ctx: RunContext, *, breakpoint: bool = False, manager: Any = None,
             reason: BaseException | None = None, on_busy: str | None = None) -> str:
        """One collective save; ``on_busy`` is accepted for the base class's callers: it always waits."""
        if self.dist_manager is None:
            raise RuntimeError("DistributedModelCheckpoint.save() before on_train_begin(): Model.train/fit "
                               "starts the callback")
        self._last_saved_step = ctx.global_step
        self._last_save_time = time.monotonic()
        parts = ctx.run_state().parts(ctx)
        info = {"epoch": ctx.epoch, "step": ctx.step, "global_step": ctx.global_step,
                **parts["info"], "world_size": self.world.world_size}
        path = self.dist_manager.save(model_state(ctx.network, ctx.optimizer), ctx.epoch, ctx.step,
                                      rank_state=rank_state(ctx, parts), info=_jsonable(info),
                                      append=self.append_values(ctx))
        self.latest_ckpt_file_name = self.original.latest_ckpt_file_name = path
        if self.dist_manager.async_save:
            log.info("saving %s in the background (committed when every rank finished)", path)
        else:
            log.info("saved %s", path)
        return path


def model_state(network: nn.Module, optimizer: Any) -> dict[str, Any]:
    """What DCP writes: the model and the optimizer, keyed by parameter name (any world size)."""
    optimizers = (optimizer,) if optimizer is not None else ()
    model_sd, optim_sd = get_state_dict(network, optimizers)
    return {"model": model_sd, "optim": optim_sd} if optimizers else {"model": model_sd}


def rank_state(ctx: RunContext, parts: dict[str, Any]) -> dict[str, Any]:
    """This rank's own state, stored in the same checkpoint: RNG, data position, callbacks, scheduler."""
    scheduler = ctx.run_state().scheduler
    return {"rng": parts["rng"], "sampler": parts["sampler"], "callbacks": parts["callbacks"],
            "scheduler": scheduler.state_dict() if scheduler is not None else None}


def _jsonable(info: dict[str, Any]) -> dict[str, Any]:
    import json
    return {k: v for k, v in info.items() if _json_ok(json, v)}


def _json_ok(json: Any, value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def restore_run(ctx: RunContext, manager: DistributedCheckpointManager, world: World) -> bool:
    """Collective: load the newest committed checkpoint of ``manager`` and set ctx's position;
    False when there is none."""
    state = model_state(ctx.network, ctx.optimizer)
    found = manager.restore(state, announce=False)
    if found is None:
        return False
    optimizers = (ctx.optimizer,) if ctx.optimizer is not None else ()
    set_state_dict(ctx.network, optimizers, model_state_dict=state["model"],
                   optim_state_dict=state.get("optim", {}))
    shared = found.rank_states[0] or {}
    own = found.rank_states[world.rank] if world.rank < len(found.rank_states) else None
    _restore_shared(ctx, shared)
    if own and own.get("rng"):
        rng.restore(own["rng"])
    _position(ctx, found.path, found.info)
    if found.world_size != world.world_size:
        log.info("resumed at %d ranks from a checkpoint of %d ranks: the data continues exactly "
                 "once; rank r < %d continues old rank r's RNG streams, any other keeps its seed",
                 world.world_size, found.world_size, found.world_size)
    return True


def _restore_shared(ctx: RunContext, shared: dict[str, Any]) -> None:
    """The data position, callback state and scheduler (rank 0's: the same on every rank)."""
    scheduler = ctx.run_state().scheduler
    if scheduler is not None and shared.get("scheduler") is not None:
        scheduler.load_state_dict(shared["scheduler"])
    stateful = ctx.run_state().callbacks.stateful()
    for key, cb_state in (shared.get("callbacks") or {}).items():
        if key in stateful:
            stateful[key].load_state_dict(cb_state)
    if shared.get("sampler") is not None and ctx.feed is not None:
        ctx.feed.load_state_dict(shared["sampler"])


def _position(ctx: RunContext, path: str, info: dict[str, Any]) -> None:
    steps = int(info.get("steps_per_epoch") or ctx.steps_per_epoch)
    if steps != ctx.steps_per_epoch:
        raise CheckpointConfigError(f"{path}: saved with {steps} steps per epoch, this run has "
                                    f"{ctx.steps_per_epoch}; resume with the same data and global "
                                    "batch size (--batch-size is the global batch under torchrun)")
    ctx.global_step = int(info.get("global_step") or 0)
    epoch_index, ctx.step = divmod(ctx.global_step, steps)
    if ctx.step == 0 and epoch_index > 0 and not info.get("epoch_end_done"):
        epoch_index, ctx.step = epoch_index - 1, steps  # saved at an epoch's last step
    ctx.start_epoch, ctx.epoch = epoch_index, epoch_index + 1
    ctx.resumed_from = path
    log.info("resumed from %s at epoch %d, step %d (global step %d)", path, epoch_index + 1,
             ctx.step, ctx.global_step)


__all__ = ["DistributedModelCheckpoint", "TrainingCheckpoints", "model_state", "rank_state",
           "restore_run"]
