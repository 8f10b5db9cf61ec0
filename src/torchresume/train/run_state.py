"""What one training run is to its callbacks: RunContext (counters) and RunState (live objects).

``RunContext`` is what every hook gets: the model, the progress counters, the last loss and
metrics, and under torchrun this rank's ``World``. ``RunState`` is the state provider a run's
checkpoints are made from and restored into: Model builds one per run and hands it to
callbacks on ``RunContext.state``; ModelCheckpoint, BackupAndRestore and OnRequestExit save and
restore through it rather than calling back into Model. It knows the live objects (network,
optimizer, scheduler, stateful callbacks, the data feed) and turns a RunContext's counters into
what a checkpoint holds besides the weights.

This module is the bottom of train/: the Model and the callback list it is handed are named by
the protocols below (``TrainingModel``, ``StatefulCallbacks``), which train/model.py's Model and
train/callback.py's CallbackList satisfy, so neither is imported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from torchresume.data.loader_state import feed_for
from torchresume.errors import CheckpointConfigError
from torchresume.log import log
from torchresume.state import rng
from torchresume.state.registry import StateRegistry, capture_tree, restore_tree
from torchresume.world import World

if TYPE_CHECKING:
    from torchresume.format.reader import Checkpoint

# Settings that may change between a run and its resume without changing what it computes.
_NOT_RUN_SETTINGS = ("resume", "storage_option", "print_every", "async_save", "write_mb_per_s", "device",
                     "overlap")



class TrainingModel(Protocol):
    """The Model running the hooks, as they see it (train/model.py's Model, which imports this module)."""

    network: nn.Module
    optimizer: torch.optim.Optimizer | None
    scheduler: Any
    device: torch.device
    step_network: nn.Module | None  # the DDP wrapper under torchrun, else None

    def predict(self, x: torch.Tensor) -> torch.Tensor: ...


class StatefulCallbacks(Protocol):
    """The run's callbacks, as their state is saved (train/callback.py's CallbackList)."""

    def stateful(self) -> dict[str, Any]: ...


@dataclass
class RunContext:
    """What callbacks see: the model, progress counters, the last loss and metrics.

    ``epoch`` is 1-based; ``step`` counts completed steps in the current epoch;
    ``global_step`` counts completed steps of the run.
    """

    model: TrainingModel
    network: nn.Module
    optimizer: torch.optim.Optimizer | None
    epoch_num: int = 0
    steps_per_epoch: int = 0
    epoch: int = 0
    step: int = 0
    start_epoch: int = 0
    global_step: int = 0
    loss: torch.Tensor | None = None
    outputs: Any = None
    metrics: dict[str, float] = field(default_factory=dict)
    dataset: Any = None
    resumed_from: str | None = None
    resumed_prefix: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    stop_requested: bool = False
    stop_signal: int | None = None
    step_rng: dict[str, Any] | None = None  # torch RNG after the last completed step
    in_step: bool = False  # between a step's start and its completion
    feed: Any = None  # the training data's position keeper (torchresume.data.loader_state.Feed)
    state: RunState | None = None  # what checkpoints are made from; set by Model.train/fit
    resume: Any = None  # what Model.train/fit was asked to resume from (restored in on_resume)
    world: World | None = None  # under torchrun, this rank's place in the job; None in one process
    last_checkpoint: str | None = None  # the newest checkpoint a stop-signal save left (on_stop)

    def run_state(self) -> RunState:
        """The run's state provider; a clear error for a context that no training run made."""
        if self.state is None:
            raise RuntimeError("this RunContext has no run state: checkpoint callbacks save during "
                               "Model.train/fit, not during eval or predict")
        return self.state

    def request_stop(self) -> None:
        self.stop_requested = True

    def original_args(self) -> RunContext:
        """MindSpore's accessor for cb_params; here the context itself."""
        return self

    @property
    def cur_epoch_num(self) -> int:
        return self.epoch

    @property
    def cur_step_num(self) -> int:
        return self.global_step


@dataclass
class RunState:
    """The live objects of one training run, and how their state is captured and restored."""

    network: nn.Module
    optimizer: torch.optim.Optimizer | None
    scheduler: Any
    callbacks: StatefulCallbacks

    def registry(self, sampler: Any = None) -> StateRegistry:
        """The run's Stateful entries beside the weights: optimizer, scheduler, data position."""
        registry = StateRegistry()
        for name, obj in (("optimizer", self.optimizer), ("scheduler", self.scheduler), ("sampler", sampler)):
            if obj is not None:
                registry.register(name, obj)
        return registry

    def parts(self, ctx: RunContext) -> dict[str, Any]:
        """The non-weight parts a checkpoint of this run needs, consistent with ctx's counters."""
        callbacks = {k: cb.state_dict() for k, cb in self.callbacks.stateful().items()}
        feed = ctx.feed if ctx.feed is not None else feed_for(ctx.dataset)
        sampler = feed.state_dict(ctx.epoch - 1, ctx.step)  # the last *completed* step
        finite = weights_finite(self.network, self.optimizer)
        info = {"steps_per_epoch": ctx.steps_per_epoch, "epoch_num": ctx.epoch_num,
                "metrics": dict(ctx.metrics), "config": ctx.config, "finite": finite,
                "finished": finite and ctx.global_step >= ctx.epoch_num * ctx.steps_per_epoch}
        return {"callbacks": callbacks, "sampler": sampler, "info": info,
                "rng": {**rng.capture(), **(ctx.step_rng or {})}}

    def save_to(self, path: str, ctx: RunContext, *, epoch_end_done: bool = False) -> None:
        """Write this run's full state to ``path`` (a fixed name; for backup-style callbacks)."""
        from torchresume.files import write_checkpoint
        parts = self.parts(ctx)
        tree = capture_tree(self.network, self.registry(), callbacks=parts["callbacks"],
                            rng_state=parts["rng"], sampler_state=parts["sampler"])
        if epoch_end_done and tree.get("sampler"):
            tree["sampler"].update(epoch=ctx.epoch, consumed=0)
        info = {"epoch": ctx.epoch, "step": ctx.step, "global_step": ctx.global_step,
                "epoch_end_done": epoch_end_done, **parts["info"]}
        write_checkpoint(path, "train_state", tree, info=info)

    def restore(self, path: str, ctx: RunContext, ckpt: Checkpoint | None = None,
                dec_key: bytes | None = None) -> None:
        """Restore the run state in ``path`` (or its already read ``ckpt``) and set ctx's position;
        ``dec_key`` is used if the file is encrypted (the run's own key, given whatever the file)."""
        from torchresume.files import describe, read_checkpoint
        if ctx.feed is None:
            ctx.feed = feed_for(ctx.dataset)
        sampler = ctx.feed if ctx.feed.kind != "iterable" else None
        if ckpt is None:
            encrypted = dec_key is not None and describe(path).encrypted
            ckpt = read_checkpoint(path, dec_key=dec_key if encrypted else None)
        if ckpt.format == "mindspore":  # weights + optimizer state under MindSpore's names
            from torchresume.files import mindspore_io
            live = SimpleNamespace(model=self.network, optimizer=self.optimizer, scheduler=self.scheduler,
                                   scaler=None, sampler=sampler)
            info = mindspore_io.restore(live, path, ckpt.tree)
        else:
            lacking = restore_tree(ckpt.tree, path, self.network, self.registry(sampler),
                                   callbacks=self.callbacks.stateful())
            info = {**ckpt.info, "lacking": lacking}
            if lacking:
                log.warning("%s holds no %s state (weights-only checkpoint?); those start fresh",
                            path, ", ".join(lacking))
        _set_position(ctx, path, info)

    def restore_parts(self, parts: dict[str, Any], path: str, ctx: RunContext, info: dict[str, Any]) -> None:
        """Restore a sharded checkpoint's run state (the weights and optimizer came through DCP):
        ``parts`` holds the scheduler, data position and callbacks (rank 0's) and this rank's RNG,
        laid out as a one-process file has them, and loads through the same ``restore_tree``."""
        if ctx.feed is None:
            ctx.feed = feed_for(ctx.dataset)
        sampler = ctx.feed if ctx.feed.kind != "iterable" else None
        registry = StateRegistry()
        for name, obj in (("scheduler", self.scheduler), ("sampler", sampler)):
            if obj is not None:
                registry.register(name, obj, required=False)
        restore_tree(parts, path, None, registry, callbacks=self.callbacks.stateful(), restore_rng="rng" in parts)
        _set_position(ctx, path, info)


def _set_position(ctx: RunContext, path: str, info: dict[str, Any]) -> None:
    """Set ctx's counters from a restored checkpoint's info; say where the run resumes."""
    ctx.resumed_from = path
    ctx.resumed_prefix = info.get("prefix")
    steps = info.get("steps_per_epoch") or ctx.steps_per_epoch
    global_step = int(info.get("global_step") or 0)
    if steps != ctx.steps_per_epoch:
        raise CheckpointConfigError(f"{path}: saved with {steps} steps per epoch, this run has "
                                    f"{ctx.steps_per_epoch}; resume with the same data and the same global "
                                    "batch_size")
    ctx.global_step = global_step
    epoch_index, ctx.step = divmod(global_step, steps)
    if ctx.step == 0 and epoch_index > 0 and not info.get("epoch_end_done"):
        # Saved at an epoch's last step, before its epoch-end hooks: run those first.
        epoch_index, ctx.step = epoch_index - 1, steps
    if "sampler" in info.get("lacking", []):
        ctx.feed.mark_lacking(epoch_index, ctx.step)
    ctx.start_epoch = epoch_index
    _warn_config_changes(info.get("config"), ctx.config, path)
    log.info("resumed from %s at epoch %d, step %d (global step %d)", path, epoch_index + 1, ctx.step,
             global_step)


def _warn_config_changes(saved: Any, now: dict[str, Any], path: str) -> None:
    """Say which settings differ from the resumed run's: the checkpoint's state wins for those."""
    if not isinstance(saved, dict) or not now:
        return
    changed = [f"{k}={saved[k]!r} (now {now[k]!r})" for k in sorted(now)
               if k in saved and k not in _NOT_RUN_SETTINGS and saved[k] != now[k]]
    if changed:
        log.warning("%s was saved with %s; the resumed state (optimizer, data order) follows the checkpoint; "
                    "use resume='none' to start over", path, ", ".join(changed))


def weights_finite(network: nn.Module, optimizer: Any = None) -> bool:
    """Whether every floating tensor of the network (and the optimizer's state) is finite."""
    tensors: list[torch.Tensor] = [t for t in network.state_dict().values() if t.is_floating_point()]
    if optimizer is not None:
        for state in optimizer.state.values():
            tensors += [t for t in state.values() if isinstance(t, torch.Tensor) and t.is_floating_point()]
    return all(bool(torch.isfinite(t).all()) for t in tensors)
