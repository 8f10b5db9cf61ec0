"""Commands that run models: train, eval, infer, demo."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

import torch
from torch import nn

from torchresume.api import load_checkpoint
from torchresume.app.mnist import create_dataset, default_mnist_dir
from torchresume.app.models import MODELS
from torchresume.state.rng import make_deterministic, seed_everything
from torchresume.train import (
    CheckpointConfig,
    LossMonitor,
    Model,
    ModelCheckpoint,
    SummaryCollector,
    TimeMonitor,
)


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("train", parents=parents, help="train on MNIST with checkpoints; the same command resumes")
    _common(p)
    p.add_argument("--train-url", "--train_url", dest="train_url", default="ckpt",
                   help="directory for checkpoints (default ./ckpt)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--momentum", type=float, default=0.9)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--save-steps", type=int, default=None, help="default: once per epoch")
    group.add_argument("--save-seconds", type=int, default=None)
    p.add_argument("--keep-max", type=int, default=5)
    p.add_argument("--prefix", default=None, help="checkpoint name prefix (default: the model name)")
    p.add_argument("--resume", default="auto", help="auto (default) | none | PATH")
    p.add_argument("--steps-per-epoch", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deterministic", action="store_true", help="bitwise-repeatable run")
    p.add_argument("--async-save", action="store_true", help="write checkpoints in the background")
    p.add_argument("--write-mb-per-s", type=float, default=None, metavar="MB",
                   help="with --async-save: write each checkpoint at most this fast (MB/s), to spread "
                        "its I/O over more steps (default: as fast as the disk goes)")
    p.add_argument("--print-every", type=int, default=None, help="loss print period in steps")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", parents=parents, help="evaluate a checkpoint on the MNIST test set (one JSON line)")
    _common(p)
    p.add_argument("--ckpt", required=True)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("infer", parents=parents, help="predict test digits and draw them like the seed")
    _common(p)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--out", default="predictions.png")
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("demo", parents=parents, help="the seed 003 experiment end to end")
    p.add_argument("--workdir", default="demo-out")
    p.add_argument("--data-url", "--data_url", dest="data_url", default=None)
    p.add_argument("--steps-per-epoch", type=int, default=None, help="shorten the demo (testing)")
    p.set_defaults(func=cmd_demo)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", choices=sorted(MODELS), default="lenet5")
    p.add_argument("--data-url", "--data_url", dest="data_url", default=None,
                   help="directory with the MNIST idx files (default: the bundled copy)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")


def _resize(model: str) -> int:
    return 32 if model == "lenet5" else 28


def _check_flags(args: argparse.Namespace) -> None:
    """Out-of-range flags are named as the user typed them."""
    for flag, value, least in (("--epochs", args.epochs, 1), ("--batch-size", args.batch_size, 1),
                               ("--save-steps", args.save_steps, 1),
                               ("--save-seconds", args.save_seconds, 1), ("--keep-max", args.keep_max, 1),
                               ("--steps-per-epoch", args.steps_per_epoch, 1),
                               ("--print-every", args.print_every, 1)):
        if value is not None and value < least:
            raise ValueError(f"{flag} must be at least {least}, got {value}")
    if args.write_mb_per_s is not None:
        if not math.isfinite(args.write_mb_per_s) or args.write_mb_per_s <= 0:
            raise ValueError(f"--write-mb-per-s must be a positive number of MB/s, got {args.write_mb_per_s:g}")
        if not args.async_save:
            raise ValueError("--write-mb-per-s paces background saves; add --async-save")
    if args.prefix is not None and ("-" in args.prefix or "/" in args.prefix or not args.prefix):
        raise ValueError(f"--prefix must be a name without '-' or '/', got {args.prefix!r}")


def cmd_train(args: argparse.Namespace) -> int:
    _check_flags(args)
    if args.deterministic:
        make_deterministic(args.seed)
    else:
        seed_everything(args.seed)
    data = args.data_url or default_mnist_dir()
    ds = create_dataset(data, True, args.batch_size, resize=_resize(args.model), seed=args.seed,
                        steps_per_epoch=args.steps_per_epoch)
    net = MODELS[args.model]()
    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum)
    steps = len(ds)
    cfg = CheckpointConfig(
        save_checkpoint_steps=args.save_steps if args.save_seconds is None else 0,
        save_checkpoint_seconds=args.save_seconds or 0, keep_checkpoint_max=args.keep_max,
        async_save=args.async_save, write_mb_per_s=args.write_mb_per_s,
        exception_save=not _launched())  # under torchrun a breakpoint would need the failed rank too
    if args.save_steps is None and args.save_seconds is None:
        cfg.save_checkpoint_steps = steps
    prefix = args.prefix or ("lenet" if args.model == "lenet5" else args.model)
    checkpoints = ModelCheckpoint(prefix, args.train_url, cfg)
    callbacks = [checkpoints, LossMonitor(args.print_every or steps), TimeMonitor()]
    model = Model(net, nn.CrossEntropyLoss(), opt, {"acc", "loss"}, device=args.device)
    lead = _rank(model.device) == 0  # torchrun: one JSONL log and one status line, from rank 0
    if lead:
        callbacks.append(SummaryCollector(_summary_dir(args.train_url), collect_freq=1))
    config = {k: v for k, v in vars(args).items() if k != "func"}
    summary = model.train(args.epochs, ds, callbacks, resume=args.resume, config=config)
    if lead and not summary["already_finished"]:
        print(f"done: {summary['global_step']} steps; latest checkpoint "
              f"{checkpoints.latest_ckpt_file_name}", flush=True)
    return 0


def _rank(device: torch.device) -> int:
    """This process's rank under torchrun (joining the process group), 0 otherwise."""
    from torchresume.train.distributed import init_world, launched
    return init_world(device).rank if launched() else 0


def _summary_dir(train_url: str) -> str:
    """Where the per-step JSONL log goes: the run directory, or its local staging for URLs."""
    from torchresume.storage import is_remote, staging_dir
    return staging_dir(train_url) if is_remote(train_url) else train_url


def _load_model(args: argparse.Namespace) -> Model:
    """The network with every tensor from the checkpoint; anything missing or extra is an error."""
    from torchresume.api import load_param_into_net
    from torchresume.errors import StateMismatchError
    from torchresume.format.name_mapping import is_optimizer_entry
    net = MODELS[args.model]()
    params = {k: v for k, v in load_checkpoint(args.ckpt).items()
              if not is_optimizer_entry(k)}  # a MindSpore file's optimizer state is not the network's
    try:
        load_param_into_net(net, params, strict_load=True)
    except StateMismatchError as exc:
        detail = str(exc).split("use strict_load=False")[0].rstrip()
        raise StateMismatchError(f"{args.ckpt} does not fit --model {args.model} (pick the --model it "
                                 f"was trained with): {detail}") from None
    return Model(net, nn.CrossEntropyLoss(), metrics={"acc", "loss"}, device=args.device)


def cmd_eval(args: argparse.Namespace) -> int:
    model = _load_model(args)
    ds = create_dataset(args.data_url or default_mnist_dir(), False, args.batch_size,
                        resize=_resize(args.model))
    print(json.dumps({"ckpt": args.ckpt, **model.eval(ds)}))
    return 0


def cmd_infer(args: argparse.Namespace) -> int:
    from torchresume.app.plots import prediction_grid
    model = _load_model(args)
    ds = create_dataset(args.data_url or default_mnist_dir(), False, args.batch_size,
                        resize=_resize(args.model), shuffle=False)
    images, labels = ds.images[:8], ds.labels[:8]
    preds = model.predict(images).argmax(1)
    prediction_grid(images, labels, preds, args.out)
    right = int((preds == labels).sum())
    print(f"wrote {args.out}: {right}/{len(labels)} right")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from torchresume.app.demo import run_demo
    run_demo(args.workdir, args.data_url or default_mnist_dir(), args.steps_per_epoch)
    return 0


def _launched() -> bool:
    from torchresume.train.distributed import launched
    return launched()


__all__ = ["register"]
