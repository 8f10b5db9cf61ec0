"""Commands that run models: train, eval, infer, demo."""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch
from torch import nn

from torchresume.app.mnist import create_dataset, default_mnist_dir
from torchresume.app.models import MODELS
from torchresume.cli import options
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
    from torchresume.cli.files import key_options
    p = sub.add_parser("train", parents=parents, help="train on MNIST with checkpoints; the same command resumes")
    _common(p)
    p.add_argument("--train-url", "--train_url", dest="train_url", default="ckpt", type=options.url,
                   help="directory or s3:// URL for checkpoints")
    p.add_argument("--epochs", type=options.whole(1), default=2, help="epochs to train in all (a resumed "
                   "run trains up to this many)")
    p.add_argument("--lr", type=options.number(above=0), default=0.01, help="SGD learning rate")
    p.add_argument("--momentum", type=options.number(least=0, below=1), default=0.9, help="SGD momentum")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--save-steps", type=options.whole(1), default=None,
                       help="save every N steps (default: once per epoch)")
    group.add_argument("--save-seconds", type=options.whole(1), default=None,
                       help="save every S seconds instead")
    p.add_argument("--keep-max", type=options.whole(1), default=5, help="checkpoints kept (the newest K)")
    p.add_argument("--prefix", default=None, help="checkpoint name prefix (default: the model name)")
    p.add_argument("--resume", default="auto", type=options.url,
                   help="auto: continue this run's newest valid checkpoint in --train-url | none: start "
                        "over | PATH: a checkpoint, or a directory of them")
    p.add_argument("--steps-per-epoch", type=options.whole(1), default=None,
                   help="steps per epoch (default: the whole training set)")
    p.add_argument("--seed", type=options.whole(0, 2**32 - 1), default=0, help="random seed")
    p.add_argument("--deterministic", action="store_true", help="bitwise-repeatable run")
    p.add_argument("--async-save", action="store_true", help="write checkpoints in the background")
    p.add_argument("--overlap", action="store_true",
                   help="with --async-save: copy the weights and optimizer state beside the next "
                        "training step instead of before the save returns (the step waits for it)")
    p.add_argument("--write-mb-per-s", type=options.number(above=0, what="a positive number of MB/s"),
                   default=None, metavar="MB",
                   help="with --async-save: write each checkpoint at most this fast (MB/s), to spread "
                        "its I/O over more steps (default: as fast as the disk goes)")
    p.add_argument("--save-deadline", type=options.number(above=0, what="a positive number of seconds"),
                   default=None, metavar="S",
                   help="under torchrun: a save whose part a rank has not written after S seconds is "
                        "aborted on every rank, nothing committed, and training goes on (default: 300)")
    p.add_argument("--print-every", type=options.whole(1), default=None,
                   help="loss print period in steps (default: once per epoch)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", parents=[*parents, key_options()],
                       help="evaluate a checkpoint on the MNIST test set (one JSON line)")
    _common(p, from_checkpoint=True)
    p.add_argument("--ckpt", required=True, type=options.url, help="the checkpoint to evaluate")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("infer", parents=[*parents, key_options()],
                       help="predict test digits and draw them like the seed")
    _common(p, from_checkpoint=True)
    p.add_argument("--ckpt", required=True, type=options.url, help="the checkpoint to predict with")
    p.add_argument("--out", default="predictions.png", help="the picture to write (PNG)")
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("demo", parents=parents, help="the seed 003 experiment end to end")
    p.add_argument("--workdir", default="demo-out", help="where checkpoints, plots and summary.json go")
    p.add_argument("--data-url", "--data_url", dest="data_url", default=None, type=options.url,
                   help="directory with the MNIST idx files (default: the bundled copy)")
    p.add_argument("--steps-per-epoch", type=options.whole(1), default=None,
                   help="shorten the demo (testing; default: the whole training set)")
    _threads(p)
    p.set_defaults(func=cmd_demo)


DEVICES = ("auto", "cpu", "cuda")
FROM_CHECKPOINT = "the network (default: the one the checkpoint was trained with, else lenet5)"


def _common(p: argparse.ArgumentParser, *, from_checkpoint: bool = False) -> None:
    """Options of every command that runs a model (``from_checkpoint``: --model defaults to the
    checkpoint's own)."""
    p.add_argument("--model", choices=sorted(MODELS), default=None if from_checkpoint else "lenet5",
                   help=FROM_CHECKPOINT if from_checkpoint else "the network")
    p.add_argument("--data-url", "--data_url", dest="data_url", default=None, type=options.url,
                   help="directory with the MNIST idx files (default: the bundled copy)")
    p.add_argument("--batch-size", type=options.whole(1), default=32,
                   help="batch size (under torchrun: the global batch, split over the ranks)")
    p.add_argument("--device", default="auto", type=_device,
                   help="auto (CUDA when present) | cpu | cuda | cuda:N")
    _threads(p)


def _threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=options.whole(1, 1024), default=None, metavar="N",
                   help="CPU threads for torch's operators (default: OMP_NUM_THREADS, else torch's default "
                        "with OpenMP waiting passively; one per idle core if you set OMP_WAIT_POLICY=active; "
                        "the choice is printed)")


def _device(text: str) -> str:
    kind = text.split(":", 1)[0]
    if kind not in DEVICES or (":" in text and (kind != "cuda" or not text.split(":", 1)[1].isdigit())):
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(DEVICES)} (or cuda:N), got {text!r}")
    return text


_device.__name__ = "device"


def set_threads(threads: int | None) -> None:
    """Apply --threads (else choose) and say how many intra-op threads this process uses (one line)."""
    import os

    from torchresume.log import log
    if threads is not None:
        torch.set_num_threads(threads)
        source = "--threads"
    elif os.environ.get("OMP_NUM_THREADS"):
        source = "OMP_NUM_THREADS"
    else:
        count, why = choose_threads()
        torch.set_num_threads(count)
        source = f"chosen: {why}; --threads N to change"
    log.info("CPU threads: %d (%s)", torch.get_num_threads(), source)


def _quiet_threads(threads: int | None) -> None:
    import os
    if threads is not None:
        torch.set_num_threads(threads)
    elif not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(choose_threads()[0])


def choose_threads(sample_s: float = 0.25) -> tuple[int, str]:
    """Intra-op threads for this process, and why.

    OpenMP waiting passively (the command sets ``OMP_WAIT_POLICY=passive``): torch's default, one
    per core. Beside CPU-bound neighbours each thread then gets its fair share and a thread that
    waits sleeps: beside a CPU-bound process per core the demo ran faster with two threads than with
    one (benchmarks/demo_threads.py; figures on the benchmarks page). Waiting actively (the user's
    ``OMP_WAIT_POLICY``): one thread per core idle over ``sample_s`` seconds, since threads beyond
    those spin on cores others need (a LeNet5 step took 20-30x longer with two threads than one)."""
    import os
    most = torch.get_num_threads()
    if os.environ.get("OMP_WAIT_POLICY", "").lower() == "passive":
        return most, "torch's default, OpenMP waits passively"
    idle = idle_cores(sample_s)
    if idle is None:  # no /proc/stat (not Linux): torch's default
        return most, "torch's default"
    count = max(1, min(most, int(idle + 0.5)))
    return count, f"{idle:.1f} of {plural(len(_cpus()), 'core')} idle, OpenMP waits actively"


def plural(n: int, word: str) -> str:
    """``1 thread``, ``2 threads``."""
    return f"{n} {word}" + ("" if n == 1 else "s")


def _cpus() -> set[int]:
    import os
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def idle_cores(sample_s: float) -> float | None:
    """How many of this process's cores were idle (idle or waiting on I/O) over ``sample_s`` seconds,
    from /proc/stat; None where there is none."""
    import time

    def times() -> dict[int, tuple[int, int]]:
        out = {}
        with open("/proc/stat", encoding="ascii") as f:
            for line in f:
                name, *fields = line.split()
                if name.startswith("cpu") and name[3:].isdigit():
                    ticks = [int(x) for x in fields[:8]]
                    out[int(name[3:])] = (ticks[3] + ticks[4], sum(ticks))  # (idle + iowait, all)
        return out
    try:
        before = times()
        time.sleep(sample_s)
        after = times()
    except (OSError, ValueError, IndexError):
        return None
    idle = 0.0
    for cpu in _cpus() & set(before) & set(after):
        total = after[cpu][1] - before[cpu][1]
        idle += (after[cpu][0] - before[cpu][0]) / total if total > 0 else 1.0
    return idle


def _resize(model: str) -> int:
    return 32 if model == "lenet5" else 28


def _check_flags(args: argparse.Namespace) -> None:
    """Options that do not work together are usage errors, named as the user typed them."""
    if args.write_mb_per_s is not None and not args.async_save:
        raise options.UsageError("--write-mb-per-s paces background saves; add --async-save")
    if args.overlap and not args.async_save:
        raise options.UsageError("--overlap overlaps the copy of a background save with training; add --async-save")
    if args.save_deadline is not None and not _launched():
        raise options.UsageError("--save-deadline bounds each rank's write of a sharded save under torchrun; one "
                                 "process has no other rank to hold: drop --save-deadline, or run under torchrun")
    if args.prefix is not None and ("-" in args.prefix or "/" in args.prefix or not args.prefix):
        raise options.UsageError(f"--prefix must be a name without '-' or '/', got {args.prefix!r}")
    _check_resume_path(args.resume)


def _train_leaving_no_empty_directory(model: Any, args: argparse.Namespace, ds: Any, callbacks: list[Any],
                                      config: dict[str, Any]) -> dict[str, Any]:
    """``Model.train``; a run that fails before it wrote anything leaves no empty ``--train-url`` behind
    (the run lock comes first and makes the directory; a bad ``--resume`` file is found after it)."""
    import contextlib
    import os

    from torchresume.storage import is_remote
    fresh = not is_remote(args.train_url) and not os.path.exists(args.train_url)
    try:
        return dict(model.train(args.epochs, ds, callbacks, resume=args.resume, config=config))
    except BaseException:
        if fresh:
            with contextlib.suppress(OSError):
                os.rmdir(args.train_url)  # only when empty: never anything the run wrote
        raise


def _check_resume_path(resume: str) -> None:
    """A local ``--resume PATH`` that does not exist is refused before the run's lock is taken, so a
    typo creates nothing in ``--train-url``."""
    import os

    from torchresume.errors import CheckpointNotFoundError
    from torchresume.storage import is_remote
    if resume not in ("auto", "none") and not is_remote(resume) and not os.path.exists(resume):
        raise CheckpointNotFoundError(f"--resume {resume}: no such checkpoint or directory; give an existing "
                                      "path, or auto (this run's newest) or none (start over)")


def cmd_train(args: argparse.Namespace) -> int:
    _check_flags(args)
    if _rank_from_env() == 0:
        set_threads(args.threads)
    elif args.threads is not None:
        torch.set_num_threads(args.threads)
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
        async_save=args.async_save, write_mb_per_s=args.write_mb_per_s, overlap=args.overlap,
        **({} if args.save_deadline is None else {"save_deadline_s": args.save_deadline}),
        exception_save=not _launched())  # under torchrun a breakpoint would need the failed rank too
    if args.save_steps is None and args.save_seconds is None:
        cfg.save_checkpoint_steps = steps
    prefix = args.prefix or ("lenet" if args.model == "lenet5" else args.model)
    checkpoints = ModelCheckpoint(prefix, args.train_url, cfg)
    callbacks = [checkpoints, LossMonitor(args.print_every or steps), TimeMonitor()]
    model = Model(net, nn.CrossEntropyLoss(), opt, {"acc", "loss"}, device=args.device)
    lead = _rank(model.device) == 0  # torchrun: one JSONL log and one status line, from rank 0
    if lead:
        # First: its file is opened (a link or FIFO there refused) before the checkpoints write the graph.
        callbacks.insert(0, SummaryCollector(_summary_dir(args.train_url), collect_freq=1))
    config = {k: v for k, v in vars(args).items() if k != "func"}
    summary = _train_leaving_no_empty_directory(model, args, ds, callbacks, config)
    if lead and not summary["already_finished"]:
        print(f"done: {summary['global_step']} steps; latest checkpoint "
              f"{checkpoints.latest_ckpt_file_name}", flush=True)
    return 0


def _rank_from_env() -> int:
    import os
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
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
    """The network with every tensor from the checkpoint; anything missing or extra is an error.

    The network is ``--model``, else the one the checkpoint records (``train`` saves its settings),
    else lenet5; ``args.model`` is set to the one used."""
    from torchresume.api import load_param_into_net
    from torchresume.cli.files import _encrypted
    from torchresume.errors import StateMismatchError
    from torchresume.files import read_checkpoint
    from torchresume.format.name_mapping import is_optimizer_entry
    from torchresume.state.tree import flat_view
    key = args.dec_key_hex if args.dec_key_hex is not None and _encrypted(args.ckpt) else None
    ckpt = read_checkpoint(args.ckpt, dec_key=key)
    args.model = args.model or saved_model(ckpt.info)
    net = MODELS[args.model]()
    params = {k: v for k, v in {**flat_view(ckpt.tree), **ckpt.append}.items()
              if not is_optimizer_entry(k)}  # a MindSpore file's optimizer state is not the network's
    try:
        load_param_into_net(net, params, strict_load=True)
    except StateMismatchError as exc:
        detail = str(exc).split("use strict_load=False")[0].rstrip()
        raise StateMismatchError(f"{args.ckpt} does not fit --model {args.model} (pick the --model it "
                                 f"was trained with): {detail}") from None
    return Model(net, nn.CrossEntropyLoss(), metrics={"acc", "loss"}, device=args.device)


def saved_model(info: dict[str, Any]) -> str:
    """The network a checkpoint of ``torchresume train`` records (its ``--model``), else lenet5."""
    config = info.get("config")
    model = config.get("model") if isinstance(config, dict) else None
    return model if isinstance(model, str) and model in MODELS else "lenet5"


def cmd_eval(args: argparse.Namespace) -> int:
    _quiet_threads(args.threads)  # stdout is one JSON line
    model = _load_model(args)
    ds = create_dataset(args.data_url or default_mnist_dir(), False, args.batch_size,
                        resize=_resize(args.model))
    print(json.dumps({"ckpt": args.ckpt, **model.eval(ds)}))
    return 0


def cmd_infer(args: argparse.Namespace) -> int:
    from torchresume.app.plots import prediction_grid
    _quiet_threads(args.threads)
    model = _load_model(args)
    ds = create_dataset(args.data_url or default_mnist_dir(), False, args.batch_size,
                        resize=_resize(args.model), shuffle=False)
    images, labels = ds.first(8)
    preds = model.predict(images).argmax(1)
    prediction_grid(images, labels, preds, args.out)
    right = int((preds == labels).sum())
    print(f"wrote {args.out}: {right}/{len(labels)} right")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from torchresume.app.demo import run_demo
    set_threads(args.threads)
    run_demo(args.workdir, args.data_url or default_mnist_dir(), args.steps_per_epoch)
    return 0


def _launched() -> bool:
    from torchresume.train.distributed import launched
    return launched()


__all__ = ["register"]
