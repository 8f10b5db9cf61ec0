"""``torchresume demo``: seed 003 end to end on the bundled MNIST.

Train LeNet5 2 epochs (lr 0.01, momentum 0.9, a checkpoint per epoch, keep 5),
evaluate, list; load lenet-2_1875.ckpt into a new network *and* a new
optimizer at lr 0.001 (as the seed does), train 2 more epochs, evaluate,
list; infer and draw; plot the curves; write summary.json.

The resumed run keeps lr 0.001: load_param_into_net restores the optimizer's
momentum buffers but keeps the hyperparameters it was built with (the seed's
intent; MindSpore would silently restore the saved 0.01).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any

import torch
from torch import nn

from torchresume.api import load_checkpoint, load_param_into_net
from torchresume.app.mnist import create_dataset
from torchresume.app.models import LeNet5
from torchresume.app.plots import curves, prediction_grid
from torchresume.state.rng import seed_everything
from torchresume.train import CheckpointConfig, LambdaCallback, LossMonitor, Model, ModelCheckpoint, RunContext


class _LossTrace:
    """Mean training loss every 50 steps, across both phases."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.offset = 0
        self._acc = 0.0

    def __call__(self, ctx: RunContext) -> None:
        self._acc += float(ctx.loss)  # type: ignore[arg-type]
        if ctx.global_step % 50 == 0:
            self.steps.append(self.offset + ctx.global_step)
            self.losses.append(self._acc / 50)
            self._acc = 0.0


def _listing(ckpt_dir: str) -> list[str]:
    return sorted(x for x in os.listdir(ckpt_dir) if x.startswith("lenet"))


def _phase(title: str, lr: float, data: str, ckpt_dir: str, steps_per_epoch: int | None,
           trace: _LossTrace, init_from: str | None) -> tuple[dict[str, float], float]:
    print(f"\n== {title} ==", flush=True)
    ds_train = create_dataset(data, True, 32, steps_per_epoch=steps_per_epoch)
    ds_eval = create_dataset(data, False, 32)
    steps = ds_train.get_dataset_size()
    net = LeNet5()
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    if init_from:
        param_dict = load_checkpoint(init_from)
        load_param_into_net(net, param_dict)
        load_param_into_net(opt, param_dict)
        print(f"loaded {os.path.basename(init_from)} into the network and the optimizer "
              f"(momentum buffers restored)", flush=True)
    print(f"learning rate: {opt.param_groups[0]['lr']}, momentum 0.9, {steps} steps per epoch",
          flush=True)
    cfg = CheckpointConfig(save_checkpoint_steps=steps, keep_checkpoint_max=5)
    callbacks = [ModelCheckpoint("lenet", ckpt_dir, cfg), LossMonitor(steps),
                 LambdaCallback(on_train_step_end=trace)]
    model = Model(net, nn.CrossEntropyLoss(), opt, metrics={"acc", "loss"}, device="cpu")
    start = time.perf_counter()
    model.train(2, ds_train, callbacks, resume="none")
    seconds = time.perf_counter() - start
    metrics = model.eval(ds_eval)
    print(f"Metrics: {metrics}", flush=True)
    trace.offset += 2 * steps
    return metrics, seconds


def _threads() -> str:
    n = torch.get_num_threads()
    return f"{n} thread" + ("" if n == 1 else "s")


def cpu_kind() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what the platform says."""
    import platform
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "cpu model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def run_demo(workdir: str, data: str, steps_per_epoch: int | None = None) -> dict[str, Any]:
    ckpt_dir = os.path.join(workdir, "ckpt")
    if os.path.isdir(ckpt_dir):
        print(f"removing the previous demo's {ckpt_dir}", flush=True)
        shutil.rmtree(ckpt_dir)
    os.makedirs(ckpt_dir)
    seed_everything(1)
    trace = _LossTrace()
    m1, t1 = _phase("train LeNet5, 2 epochs, lr 0.01", 0.01, data, ckpt_dir, steps_per_epoch,
                       trace, None)
    listing1 = _listing(ckpt_dir)
    print("Checkpoints after first training:\n  " + "\n  ".join(listing1), flush=True)
    last = os.path.join(ckpt_dir, sorted(f for f in listing1 if f.endswith(".ckpt"))[-1])
    resume_step = trace.offset
    m2, t2 = _phase("resume from lenet-2 for 2 more epochs, lr 0.001", 0.001, data, ckpt_dir,
                         steps_per_epoch, trace, last)
    listing2 = _listing(ckpt_dir)
    print("Checkpoints after resuming training:\n  " + "\n  ".join(listing2), flush=True)

    final = os.path.join(ckpt_dir, sorted(f for f in listing2 if f.startswith("lenet_1-")
                                          and f.endswith(".ckpt"))[-1])
    infer_net = LeNet5()
    load_checkpoint(final, net=infer_net, strict_load=True)
    test = create_dataset(data, False, 32, shuffle=False)
    images, labels = test.first(8)
    preds = Model(infer_net).predict(images).argmax(1)
    pred_png = os.path.join(workdir, "prediction.png")
    prediction_grid(images, labels, preds, pred_png)
    curve_png = os.path.join(workdir, "curves.png")
    curves(trace.steps, trace.losses, [(resume_step, m1["acc"]), (trace.offset, m2["acc"])],
           resume_step, curve_png)
    summary = {"accuracy_after_first_training": m1["acc"], "accuracy_after_resuming": m2["acc"],
               "loss_after_first_training": m1["loss"], "loss_after_resuming": m2["loss"],
               "train_seconds": [round(t1, 2), round(t2, 2)], "lr": [0.01, 0.001],
               "files_after_first_training": listing1, "files_after_resuming": listing2,
               "inference_checkpoint": final, "prediction_png": pred_png, "curves_png": curve_png,
               "predictions": [int(p) for p in preds], "truth": [int(t) for t in labels],
               "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu_kind()}
    with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    print(f"\nwrote {pred_png}, {curve_png} and {os.path.join(workdir, 'summary.json')}")
    print(f"accuracy: {m1['acc']:.4f} after 2 epochs, {m2['acc']:.4f} after resuming (torch "
          f"{torch.__version__}, {_threads()}, CPU {cpu_kind()}: the same on every "
          "run with the same torch build, CPU kind and thread count)", flush=True)
    return summary
