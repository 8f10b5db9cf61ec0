"""ModelCheckpoint: decides when to save; RunCheckpoints keeps the books.

Files are ``{prefix}-{epoch}_{step}.ckpt`` (step within the epoch), a fresh
run into a directory that already has the prefix uses ``{prefix}_N``, a
resumed run keeps its prefix, and ``{prefix}-graph.json`` records the network.
When training begins it opens the run's ``RunCheckpoints`` (the same in one
process and under torchrun, where its manager saves sharded). It also finds what a run resumes from (``on_resume``)
and saves on a stop signal (``on_stop``): Model only runs steps and hooks.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from torch import nn

from torchresume.errors import CheckpointWriteError, UnsafePathError
from torchresume.log import log
from torchresume.naming import check_prefix
from torchresume.retention import KeepEveryNMinutes, KeepLast, RetentionPolicy
from torchresume.storage import resolve
from torchresume.train.callback import Callback, RunContext
from torchresume.train.checkpoint_config import CheckpointConfig
from torchresume.train.run_checkpoints import RunCheckpoints


def graph_description(network: nn.Module) -> dict[str, Any]:
    """The module tree and every parameter's name, shape and dtype."""
    return {
        "class": type(network).__name__,
        "repr": repr(network),
        "modules": [{"name": n or "<root>", "type": type(m).__name__}
                    for n, m in network.named_modules()],
        "parameters": [{"name": n, "shape": list(t.shape), "dtype": str(t.dtype)}
                       for n, t in network.state_dict().items()],
    }


def storage_for(ctx: RunContext, directory: str, config: CheckpointConfig,
                policies: list[RetentionPolicy]) -> RunCheckpoints:
    """The books of this run: one process, or this rank's place in a torchrun job (``ctx.world``)."""
    return RunCheckpoints(directory, config, policies, ctx.world)


class ModelCheckpoint(Callback):
    """Saves the full training state on MindSpore's schedule (see CheckpointConfig).

    Example:
        ```python
        ckpt = tr.ModelCheckpoint("lenet", "runs/mc", tr.CheckpointConfig(save_checkpoint_steps=2))
        model.train(1, train_ds, callbacks=[ckpt], resume="auto")
        print(ckpt.latest_ckpt_file_name)
        ```
    """

    def __init__(self, prefix: str = "CKP", directory: str | None = None,
                 config: CheckpointConfig | None = None) -> None:
        check_prefix(prefix)
        if config is not None and not isinstance(config, CheckpointConfig):
            raise TypeError(f"config must be a CheckpointConfig, got {type(config).__name__}")
        self.base_prefix = prefix
        self.prefix = prefix
        self.directory = str(directory) if directory is not None else os.getcwd()
        self.config = config or CheckpointConfig()
        self.storage: RunCheckpoints | None = None  # from the run's start
        self.latest_ckpt_file_name: str | None = None
        self.best: float | None = None
        self._last_saved_step = -1
        self._last_save_time = 0.0

    @property
    def manager(self) -> Any:
        """The manager of the run's checkpoints (None before training begins)."""
        return self.storage.manager if self.storage is not None else None

    @property
    def best_manager(self) -> Any:
        """The manager of ``{prefix}-best`` with ``monitor=`` (None otherwise)."""
        return self.storage.best_manager if self.storage is not None else None

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "last_saved_step": self._last_saved_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state.get("best")
        self._last_saved_step = state.get("last_saved_step", -1)

    # -- hooks ----------------------------------------------------------------------------
    def _policies(self) -> list[RetentionPolicy]:
        if self.config.keep_checkpoint_max:
            return [KeepLast(self.config.keep_checkpoint_max)]
        return [KeepEveryNMinutes(self.config.keep_checkpoint_per_n_minutes)]

    def _open(self, ctx: RunContext) -> RunCheckpoints:
        if self.storage is None:
            self.storage = storage_for(ctx, self.directory, self.config, self._policies())
        return self.storage

    def on_resume(self, ctx: RunContext) -> None:
        """Restore the run ``ctx.resume`` names ("auto": this directory's run of this prefix)."""
        if ctx.resumed_from is None:  # another checkpoint callback restored it already
            run = self.base_prefix if ctx.resume == "auto" else None  # the run this command names
            storage = self._open(ctx)
            storage.lock(self.base_prefix)  # the run lock before anything reads, uploads or deletes
            try:
                storage.resume(ctx, ctx.resume, run)
            except BaseException:
                storage.close()
                raise
            if ctx.global_step >= ctx.epoch_num * ctx.steps_per_epoch:
                storage.close()  # already finished: training returns at once, and no hook follows

    def on_train_begin(self, ctx: RunContext) -> None:
        storage = self._open(ctx)
        storage.lock(self.base_prefix)  # before fresh_prefix reads the directory
        self.prefix = ctx.resumed_prefix or storage.fresh_prefix(self.base_prefix)
        storage.begin(ctx, self.prefix)
        self._last_save_time = time.monotonic()
        if storage.lead():
            if self.prefix != self.base_prefix and not ctx.resumed_prefix:
                log.info("%s already has run '%s'; this run saves as '%s' (continue it later with prefix='%s')",
                         self.directory, self.base_prefix, self.prefix, self.prefix)
            self._write_graph(ctx.network)

    def _write_graph(self, network: nn.Module) -> None:
        storage, where = resolve(self.directory)
        path = storage.join(where, f"{self.prefix}-graph.json")
        # written at every start: a prefix reused after a run that never committed gets this network's graph
        storage.write_atomic(path, [json.dumps(graph_description(network), indent=1).encode()], read_only=False)

    def on_train_step_end(self, ctx: RunContext) -> None:
        cfg = self.config
        if cfg.save_checkpoint_steps:
            due = ctx.global_step % cfg.save_checkpoint_steps == 0
        else:  # clocks differ per rank under torchrun: save when any rank's period is over
            due = self._open(ctx).agree(time.monotonic() - self._last_save_time >= cfg.save_checkpoint_seconds)
        if due:
            self.save(ctx)

    def save_if_unsaved(self, ctx: RunContext) -> str | None:
        """Save the current step unless it was just saved; the newest checkpoint's path.

        The stop-signal and end-of-training save: it waits for a background save in flight,
        whatever ``on_busy`` says (skipping it would lose the run's last steps).
        """
        if self.storage is not None and self._last_saved_step != ctx.global_step and ctx.global_step > 0:
            self.save(ctx, on_busy="wait")
        return self.latest_ckpt_file_name

    def on_stop(self, ctx: RunContext) -> None:
        """A stop signal: save this step and wait for pending writes and uploads, bounded."""
        if self.storage is None:
            return
        self.save_if_unsaved(ctx)
        ctx.last_checkpoint = self.latest_ckpt_file_name
        start = time.monotonic()
        try:
            self.storage.wait(timeout=UPLOAD_WAIT_S)
        except TimeoutError:
            log.warning("uploads still pending after %.0f s; the local copies stay in %s", UPLOAD_WAIT_S,
                        self.storage.staging)
            return
        if self.storage.staging:
            log.warning("pending uploads finished in %.1f s", time.monotonic() - start)

    def on_train_end(self, ctx: RunContext) -> None:
        if self.storage is None:
            return
        try:
            self.save_if_unsaved(ctx)
            self.storage.wait()
        finally:
            self.storage.close()

    def on_eval_end(self, ctx: RunContext) -> None:
        monitor = self.config.monitor
        if not monitor or self.best_manager is None:
            return
        value = ctx.metrics.get(monitor)
        if value is None:
            raise KeyError(f"ModelCheckpoint monitors {monitor!r} but eval returned "
                           f"{sorted(ctx.metrics)}; set monitor to one of them")
        value = self._open(ctx).agree_value(float(value))
        better = self.best is None or (value > self.best if self.config.mode == "max"
                                       else value < self.best)
        if better:
            self.best = value
            self.save(ctx, best=True)

    def on_exception(self, ctx: RunContext, exc: BaseException) -> None:
        if self.storage is None:
            return
        try:
            # An UnsafePathError: the run directory holds an entry torchresume refuses to write into
            # (a link, a FIFO, a directory in its lock's or summary's place): nothing more is written there.
            if self.config.exception_save and not isinstance(exc, (SystemExit, CheckpointWriteError,
                                                                   UnsafePathError)):
                self.save(ctx, breakpoint=True, reason=exc)
        finally:
            self.storage.close()

    # -- saving ---------------------------------------------------------------------------
    def append_values(self, ctx: RunContext) -> dict[str, Any]:
        """``CheckpointConfig(append_info=...)`` at this step: epoch_num/step_num and the user's dict."""
        names = {"epoch_num": ctx.epoch, "step_num": ctx.global_step}
        append = {k: names[k] for k in self.config.append_names}
        append.update(self.config.append_dict)
        return append

    def save(self, ctx: RunContext, *, breakpoint: bool = False, best: bool = False,
             reason: BaseException | None = None, on_busy: str | None = None) -> str | None:
        """Save this step now (``best``: a best checkpoint); the path, or None when skipped (on_busy)."""
        if self.storage is None or self.storage.manager is None:
            raise RuntimeError("ModelCheckpoint.save() before on_train_begin(): pass the callback to "
                               "Model.train/fit, which starts it")
        step = ctx.step + 1 if breakpoint and ctx.in_step else ctx.step
        path: str | None = self.storage.save(ctx, ctx.run_state().parts(ctx), self.append_values(ctx), step=step,
                                             best=best, breakpoint=breakpoint, reason=reason, on_busy=on_busy)
        if not best and not breakpoint:
            self._last_save_time = time.monotonic()  # a skipped save is not retried at once either
            if path is not None:  # None: skipped, a save was running, so this step is still unsaved
                self._last_saved_step = ctx.global_step
        if not best and path is not None:
            self.latest_ckpt_file_name = path
        return path


UPLOAD_WAIT_S = 120.0  # a stop signal waits this long for uploads (schedulers kill soon after)
