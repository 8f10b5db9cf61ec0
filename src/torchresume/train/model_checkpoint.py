"""ModelCheckpoint: decides when to save; the CheckpointManager keeps the books.

Files are ``{prefix}-{epoch}_{step}.ckpt`` (step within the epoch), a fresh
run into a directory that already has the prefix uses ``{prefix}_N``, a
resumed run keeps its prefix, and ``{prefix}-graph.json`` records the network.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from torch import nn

from torchresume.errors import CheckpointConfigError, CheckpointWriteError
from torchresume.log import log
from torchresume.manager import CheckpointManager, unique_prefix
from torchresume.retention import KeepBest, KeepEveryNMinutes, KeepLast, RetentionPolicy
from torchresume.storage import resolve
from torchresume.train.callback import Callback, RunContext
from torchresume.train.checkpoint_config import CheckpointConfig


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
        if not isinstance(prefix, str) or not prefix or "/" in prefix or "-" in prefix:
            raise CheckpointConfigError(f"prefix must be a non-empty str without '/' or '-', got "
                                        f"{prefix!r}")
        if config is not None and not isinstance(config, CheckpointConfig):
            raise TypeError(f"config must be a CheckpointConfig, got {type(config).__name__}")
        self.base_prefix = prefix
        self.prefix = prefix
        self.directory = str(directory) if directory is not None else os.getcwd()
        self.config = config or CheckpointConfig()
        self.manager: CheckpointManager | None = None
        self.best_manager: CheckpointManager | None = None
        self.latest_ckpt_file_name: str | None = None
        self.best: float | None = None
        self._last_saved_step = -1
        self._last_save_time = 0.0

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

    def on_train_begin(self, ctx: RunContext) -> None:
        self.prefix = ctx.resumed_prefix or unique_prefix(self.directory, self.base_prefix)
        if self.prefix != self.base_prefix and not ctx.resumed_prefix:
            log.info("%s already has run '%s'; this run saves as '%s' (continue it later with --prefix %s)",
                     self.directory, self.base_prefix, self.prefix, self.prefix)
        cfg = self.config
        live = ctx.run_state()
        common: dict[str, Any] = dict(model=live.network, optimizer=live.optimizer, scheduler=live.scheduler,
                                      async_save=cfg.async_save, enc_key=cfg.enc_key,
                                      enc_mode=cfg.enc_mode, saved_network=cfg.saved_network,
                                      file_format=cfg.format, crc_check=cfg.crc_check,
                                      on_busy=cfg.on_busy, write_mb_per_s=cfg.write_mb_per_s)
        self.manager = CheckpointManager(self.directory, prefix=self.prefix, keep=self._policies(),
                                         **common)
        self.manager.acquire_lock()
        self.manager.verbose = True
        self.manager.upload_pending()
        if cfg.monitor:
            self.best_manager = CheckpointManager(
                self.directory, prefix=f"{self.prefix}-best",
                keep=[KeepBest(cfg.keep_best_max, cfg.monitor, cfg.mode)], **common)
        self._last_save_time = time.monotonic()
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
        else:
            due = time.monotonic() - self._last_save_time >= cfg.save_checkpoint_seconds
        if due:
            self.save(ctx)

    def save_if_unsaved(self, ctx: RunContext) -> str | None:
        """Save the current step unless it was just saved; the newest checkpoint's path.

        The stop-signal and end-of-training save: it waits for a background save in flight,
        whatever ``on_busy`` says (skipping it would lose the run's last steps).
        """
        if self.manager is not None and self._last_saved_step != ctx.global_step and ctx.global_step > 0:
            self.save(ctx, on_busy="wait")
        return self.latest_ckpt_file_name

    def on_train_end(self, ctx: RunContext) -> None:
        if self.manager is None:
            return
        try:
            self.save_if_unsaved(ctx)
            self.manager.wait()
            if self.best_manager is not None:
                self.best_manager.wait()
        finally:
            self.manager.release_lock()

    def on_eval_end(self, ctx: RunContext) -> None:
        monitor = self.config.monitor
        if not monitor or self.best_manager is None:
            return
        value = ctx.metrics.get(monitor)
        if value is None:
            raise KeyError(f"ModelCheckpoint monitors {monitor!r} but eval returned "
                           f"{sorted(ctx.metrics)}; set monitor to one of them")
        better = self.best is None or (value > self.best if self.config.mode == "max"
                                       else value < self.best)
        if better:
            self.best = float(value)
            self.save(ctx, manager=self.best_manager)

    def on_exception(self, ctx: RunContext, exc: BaseException) -> None:
        if self.manager is None:
            return
        try:
            if self.config.exception_save and not isinstance(exc, (SystemExit, CheckpointWriteError)):
                self.save(ctx, breakpoint=True, reason=exc)
        finally:
            self.manager.release_lock()

    # -- saving ---------------------------------------------------------------------------
    def append_values(self, ctx: RunContext) -> dict[str, Any]:
        """``CheckpointConfig(append_info=...)`` at this step: epoch_num/step_num and the user's dict."""
        names = {"epoch_num": ctx.epoch, "step_num": ctx.global_step}
        append = {k: names[k] for k in self.config.append_names}
        append.update(self.config.append_dict)
        return append

    def save(self, ctx: RunContext, *, breakpoint: bool = False,
             manager: CheckpointManager | None = None, reason: BaseException | None = None,
             on_busy: str | None = None) -> str | None:
        manager = manager or self.manager
        if manager is None:
            raise RuntimeError("ModelCheckpoint.save() before on_train_begin(): pass the callback to "
                               "Model.train/fit, which starts it")
        append = self.append_values(ctx)
        step = ctx.step + 1 if breakpoint and ctx.in_step else ctx.step
        parts = ctx.run_state().parts(ctx)
        state: dict[str, Any] = dict(info=parts["info"], append=append, callbacks=parts["callbacks"],
                                     rng_state=parts["rng"], sampler_state=parts["sampler"])
        path: str | None
        if reason is not None:
            path = manager.save_breakpoint(ctx.epoch, step, ctx.global_step, reason=reason, **state)
        else:
            path = manager.save(ctx.epoch, step, ctx.global_step, breakpoint=breakpoint, on_busy=on_busy, **state)
        if manager is self.manager and not breakpoint:
            self._last_save_time = time.monotonic()  # a skipped save is not retried at once either
            if path is not None:  # None: skipped, a save was running, so this step is still unsaved
                self._last_saved_step = ctx.global_step
        if manager is self.manager and path is not None:
            self.latest_ckpt_file_name = path
        return path
