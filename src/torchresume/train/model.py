"""Model: train / fit / eval / predict around a network, with callbacks and exact resume.

The step loop is the hand-written PyTorch loop plus counters; hooks run only
for callbacks that override them. A run's full state (weights, optimizer,
scheduler, data position, RNG, callback state) is what ModelCheckpoint saves
and what ``resume`` restores, so a restarted run continues at the next batch.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from torchresume.manager import CheckpointManager

from torchresume import signals
from torchresume.data.loader_state import feed_for, fork_hazard
from torchresume.log import log
from torchresume.signals import STOP_SIGNALS, StopSignals
from torchresume.state import rng
from torchresume.train.callback import Callback, CallbackList, RunContext
from torchresume.train.resume import Resume
from torchresume.train.run_state import RunState

_METRICS = {"acc", "accuracy", "loss"}


def select_device(device: str | torch.device | None) -> torch.device:
    """``auto``/None -> CUDA when present, else CPU."""
    from torchresume.errors import DeviceError
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeviceError(f"device {str(device)!r} is not a torch device; use 'auto', 'cpu' or "
                          "'cuda' (or 'cuda:N')") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {str(device)!r} was asked for but CUDA is not available here; use 'cpu'")
    return dev


class Model:
    """MindSpore's Model harness on PyTorch: train, fit, eval and predict with exact resume.

    Args:
        network: the ``nn.Module`` to train.
        loss_fn: ``loss_fn(output, labels)``, e.g. ``nn.CrossEntropyLoss()``.
        optimizer: a ``torch.optim.Optimizer`` over the network's parameters.
        metrics: names among ``"acc"``/``"accuracy"`` and ``"loss"`` that ``eval`` reports.
        scheduler: an LR scheduler stepped once per epoch, saved and restored with the run.
        device: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.

    The datasets are the bundled ``ArrayDataset``, a ``torch.utils.data.DataLoader`` or torchdata's
    ``StatefulDataLoader``. Under torchrun the network is wrapped in DDP and saves are sharded.

    Example:
        ```python
        model = tr.Model(net, nn.CrossEntropyLoss(), opt, metrics={"acc", "loss"})
        config = tr.CheckpointConfig(save_checkpoint_steps=2, keep_checkpoint_max=2)
        model.fit(1, train_ds, valid_ds, callbacks=[tr.ModelCheckpoint("lenet", "ckpt", config)],
                  resume="auto")
        print(model.eval(valid_ds))
        ```
    """

    def __init__(self, network: nn.Module, loss_fn: Callable[..., torch.Tensor] | None = None,
                 optimizer: torch.optim.Optimizer | None = None,
                 metrics: Iterable[str] | dict[str, Any] | None = None, *,
                 scheduler: Any = None, device: str | torch.device | None = None) -> None:
        if not isinstance(network, nn.Module):
            raise TypeError(f"network must be an nn.Module, got {type(network).__name__}")
        names = set(metrics or ())
        unknown = names - _METRICS
        if unknown:
            raise ValueError(f"unknown metrics {sorted(unknown)}; supported: {sorted(_METRICS)}")
        self.device = select_device(device)
        self.network = network.to(self.device)
        self.loss_fn, self.optimizer, self.scheduler = loss_fn, optimizer, scheduler
        self.metrics = names
        self._callbacks = CallbackList(None)
        self._dataset: Any = None
        self.step_network: nn.Module | None = None  # the DDP wrapper under torchrun (train/distributed.py)

    # -- training -------------------------------------------------------------------------
    def train(self, epoch: int, train_dataset: Any, callbacks: Sequence[Callback] | Callback | None = None,
              dataset_sink_mode: bool = False, sink_size: int = -1, initial_epoch: int = 0, *,
              resume: str | CheckpointManager | None = None, handle_signals: bool = True,
              config: dict[str, Any] | None = None) -> dict[str, Any]:
        """Train for ``epoch`` epochs (counting from 0, or ``initial_epoch``).

        ``resume``: None/"none" starts fresh; a directory or URL of checkpoints restores the
        newest valid one there (CheckpointNotFoundError if it holds none); a CheckpointManager,
        its newest valid one (if any); a checkpoint
        path restores that one; "auto" means the ModelCheckpoint callback's directory.
        Returns a summary: {"resumed_from", "global_step", "finished", ...}.
        """
        return self._run(epoch, train_dataset, None, 1, callbacks, initial_epoch, resume,
                         handle_signals, config or {})

    def fit(self, epoch: int, train_dataset: Any, valid_dataset: Any = None, valid_frequency: int = 1,
            callbacks: Sequence[Callback] | Callback | None = None, dataset_sink_mode: bool = False,
            valid_dataset_sink_mode: bool = False, initial_epoch: int = 0, *,
            resume: str | CheckpointManager | None = None, handle_signals: bool = True,
            config: dict[str, Any] | None = None) -> dict[str, Any]:
        """Train, evaluating ``valid_dataset`` every ``valid_frequency`` epochs."""
        if not isinstance(valid_frequency, int) or valid_frequency < 1:
            raise ValueError(f"valid_frequency must be a positive int, got {valid_frequency!r}")
        return self._run(epoch, train_dataset, valid_dataset, valid_frequency, callbacks,
                         initial_epoch, resume, handle_signals, config or {})

    def _check_ready(self) -> None:
        if self.loss_fn is None or self.optimizer is None:
            raise ValueError("Model needs loss_fn and optimizer to train: "
                             "Model(net, loss_fn=..., optimizer=...)")

    def _run(self, epochs: int, dataset: Any, valid: Any, valid_frequency: int,
             callbacks: Sequence[Callback] | Callback | None, initial_epoch: int,
             resume: str | CheckpointManager | None, handle_signals: bool,
             config: dict[str, Any]) -> dict[str, Any]:
        self._check_ready()
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epoch must be a positive int, got {epochs!r}")
        world = None  # under torchrun: this rank's place in the job
        if _launched_by_torchrun():  # ranks of one job: DDP, this rank's data, agreed stops
            from torchresume.train import distributed
            dataset, callbacks, world = distributed.prepare(self, dataset, callbacks, handle_signals)
        items = [callbacks] if isinstance(callbacks, Callback) else list(callbacks or [])
        resuming = resume not in (None, "none")
        if resuming and not any(cb.overrides("on_resume") for cb in items):
            items.append(Resume())  # no checkpoint callback: restore only
        lead = world is None or world.rank == 0  # the process that shows progress
        cbs = CallbackList(_with_progress(items) if lead else items)
        self._callbacks, self._dataset = cbs, dataset
        ctx = RunContext(self, self.network, self.optimizer, epoch_num=epochs,
                         steps_per_epoch=len(dataset), dataset=dataset, config=config,
                         state=RunState(self.network, self.optimizer, self.scheduler, cbs),
                         resume=resume, world=world)
        ctx.start_epoch, ctx.step = initial_epoch, 0
        ctx.feed = feed_for(dataset)
        for caveat in (ctx.feed.warning(), fork_hazard(dataset)):
            if caveat:
                log.warning("warning: %s", caveat)
        if resuming:
            cbs.call("on_resume", ctx)
        else:
            ctx.feed.set_epoch(initial_epoch)
        ctx.global_step = ctx.global_step or initial_epoch * ctx.steps_per_epoch
        total = epochs * ctx.steps_per_epoch
        if ctx.resumed_from and ctx.global_step >= total:
            log.info("training already finished (%d/%d steps, %s); nothing to do", ctx.global_step, total,
                     ctx.resumed_from)
            ctx.epoch = min(epochs, max(1, -(-ctx.global_step // ctx.steps_per_epoch)))
            return self._summary(ctx, finished=True, already=True)
        needs_rng = any(getattr(getattr(cb, "config", None), "exception_save", False)
                        for cb in cbs.callbacks)
        if needs_rng:
            ctx.step_rng = rng.capture_torch()
        self.network.train()
        with _signal_catcher(ctx, handle_signals):
            try:
                cbs.call("on_train_begin", ctx)  # may restore state too (BackupAndRestore)
                for epoch_index in range(ctx.start_epoch, epochs):
                    if epoch_index != ctx.start_epoch:
                        ctx.step = 0
                    ctx.epoch = epoch_index + 1
                    if ctx.step == 0:
                        cbs.call("on_train_epoch_begin", ctx)
                    self._epoch(ctx, cbs, needs_rng)
                    if ctx.stop_signal is not None:
                        self._stop_for_signal(ctx, cbs)
                    cbs.call("on_train_epoch_end", ctx)
                    if valid is not None and (epoch_index + 1) % valid_frequency == 0:
                        ctx.metrics = self._evaluate(valid, cbs, ctx)
                        self.network.train()
                    if self.scheduler is not None:
                        self.scheduler.step()
                    if ctx.stop_requested:
                        break
                cbs.call("on_train_end", ctx)
            except BaseException as exc:
                cbs.on_exception(ctx, exc)
                raise
        return self._summary(ctx, finished=ctx.global_step >= total)

    def _epoch(self, ctx: RunContext, cbs: CallbackList, needs_rng: bool) -> None:
        net = self.network if self.step_network is None else self.step_network
        opt, loss_fn, device = self.optimizer, self.loss_fn, self.device
        assert opt is not None and loss_fn is not None
        step_begin, step_end = cbs.has("on_train_step_begin"), cbs.has("on_train_step_end")
        on_cpu = device.type == "cpu"
        for x, y in ctx.feed.batches(ctx.step, ctx.steps_per_epoch):
            ctx.in_step = True
            if step_begin:
                cbs.call("on_train_step_begin", ctx)
            if not on_cpu:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            out = net(x)
            loss = loss_fn(out, y)
            loss.backward()
            opt.step()
            ctx.step += 1
            ctx.global_step += 1
            ctx.loss, ctx.outputs = loss.detach(), out
            ctx.in_step = False
            if needs_rng:  # a breakpoint must not see draws of the step that failed
                ctx.step_rng = rng.capture_torch()
            if step_end:
                cbs.call("on_train_step_end", ctx)
            if ctx.stop_signal is not None or ctx.stop_requested:
                return

    def _stop_for_signal(self, ctx: RunContext, cbs: CallbackList) -> None:
        sig = ctx.stop_signal
        assert sig is not None
        cbs.call("on_stop", ctx)  # checkpoint callbacks save this step
        where = (f"; checkpoint {ctx.last_checkpoint}" if ctx.last_checkpoint else
                 " (no checkpoint callback: nothing saved)")
        log.warning("%s at epoch %d step %d%s; exiting with %d", signals.name(sig), ctx.epoch, ctx.step, where,
                    signals.exit_code(sig))
        raise SystemExit(signals.exit_code(sig))

    def _summary(self, ctx: RunContext, *, finished: bool, already: bool = False) -> dict[str, Any]:
        return {"resumed_from": ctx.resumed_from, "global_step": ctx.global_step,
                "epoch": ctx.epoch, "finished": finished, "already_finished": already,
                "metrics": dict(ctx.metrics)}

    # -- evaluation -----------------------------------------------------------------------
    def eval(self, valid_dataset: Any, callbacks: Sequence[Callback] | Callback | None = None,
             dataset_sink_mode: bool = False) -> dict[str, float]:
        """Mean loss and accuracy over ``valid_dataset`` (the metrics given to Model)."""
        cbs = CallbackList(callbacks)
        ctx = RunContext(self, self.network, self.optimizer)
        return self._evaluate(valid_dataset, cbs, ctx)

    def _evaluate(self, dataset: Any, cbs: CallbackList, ctx: RunContext) -> dict[str, float]:
        cbs.call("on_eval_begin", ctx)
        self.network.eval()
        total, correct, loss_sum, batches = 0, 0, 0.0, 0
        with torch.no_grad():
            for x, y in _iterate_eval(dataset):
                x, y = x.to(self.device), y.to(self.device)
                out = self.network(x)
                if self.loss_fn is not None:
                    loss_sum += float(self.loss_fn(out, y))
                correct += int((out.argmax(1) == y).sum())
                total += len(y)
                batches += 1
        if total == 0:
            raise ValueError("the evaluation dataset yielded no batches")
        metrics: dict[str, float] = {}
        for name in sorted(self.metrics or {"acc"}):
            if name in ("acc", "accuracy"):
                metrics[name] = correct / total
            elif name == "loss" and self.loss_fn is not None:
                metrics["loss"] = loss_sum / batches
        ctx.metrics = metrics
        cbs.call("on_eval_end", ctx)
        return metrics

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The network's output for ``x`` (no grad, eval mode), on the CPU."""
        self.network.eval()
        with torch.no_grad():
            return self.network(x.to(self.device)).cpu()


def _with_progress(callbacks: Sequence[Callback] | Callback | None) -> list[Callback]:
    """The user's callbacks, plus a progress bar on a terminal, or periodic lines in a log."""
    items = [callbacks] if isinstance(callbacks, Callback) else list(callbacks or [])
    if sys.stderr.isatty():
        from torchresume.train.progress_bar import ProgressBar
        items.append(ProgressBar())
    else:  # a log file or a pipe: a line every tenth of an epoch
        from torchresume.train.progress_log import ProgressLog
        items.append(ProgressLog())
    return items


def _launched_by_torchrun() -> bool:
    import os
    return os.environ.get("WORLD_SIZE", "1") not in ("", "1")


def _iterate_eval(dataset: Any) -> Iterable[Any]:
    ordered = getattr(dataset, "ordered_batches", None)
    return ordered() if ordered is not None else dataset


def _signal_catcher(ctx: RunContext, enabled: bool) -> StopSignals:
    """Turns SIGTERM/SIGINT/SIGUSR1 into ``ctx.stop_signal``: a stop at the next step boundary."""
    def on_signal(signum: int) -> None:
        ctx.stop_signal = signum
        again = " (Ctrl-C again to abort)" if signum == signal.SIGINT else ""  # only a second SIGINT aborts
        log.warning("\n%s received; stopping after this step%s", signals.name(signum), again)
    return StopSignals(STOP_SIGNALS, enabled=enabled, on_signal=on_signal)
