"""Model.train / fit under torchrun: process group, DDP, this rank's data, rank-0 status.

``launched()`` says whether torchrun started this process as one of several
ranks (``WORLD_SIZE`` > 1). ``prepare`` then readies a run without touching
the single-process loop: it joins the process group (gloo on CPU, nccl on
CUDA with the device of ``LOCAL_RANK``), wraps the network in DDP for the
steps, gives this rank its share of the training data, and puts a
StopAgreement (ranks stop at the same step) before the user's callbacks.
Checkpoint callbacks stay as they are: their managers pick the sharded layout
from the world when training begins. Status lines are logged by rank 0 only.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import signal
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from torchresume.distributed.ending import end_process, leave_group
from torchresume.log import log, monitor
from torchresume.train import torchrun_options
from torchresume.train.callback import Callback
from torchresume.train.run_state import TrainingModel
from torchresume.world import World

COLLECTIVE_TIMEOUT_S = 600  # a rank that stops answering fails the others after this long
_PR_SET_PDEATHSIG = 1


def launched() -> bool:
    """True in a process torchrun started as one of several ranks."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def init_world(device: torch.device) -> World:
    """Join the process group torchrun describes (once); the device this rank trains on."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = timedelta(seconds=COLLECTIVE_TIMEOUT_S)
        store = attempt_store(timeout)
        if store is None:
            dist.init_process_group(backend, timeout=timeout)
        else:
            dist.init_process_group(backend, store=store, rank=int(os.environ["RANK"]),
                                    world_size=int(os.environ["WORLD_SIZE"]), timeout=timeout)
        atexit.register(leave_group)
        die_with_launcher()
    world = World(dist.get_rank(), dist.get_world_size(), device, local_rank)
    if world.rank != 0:
        quiet()
    if not _peers:
        _know_peers(world)
    return world


# Each rank's (host, pid), gathered once at start: when a collective fails, which rank is gone.
_peers: list[tuple[str, int]] = []


def _know_peers(world: World) -> None:
    import socket
    found: list[Any] = [None] * world.size
    dist.all_gather_object(found, (socket.gethostname(), os.getpid()))
    _peers[:] = [tuple(p) for p in found]


def _gone(pid: int) -> bool:
    """Whether process ``pid`` on this host has ended (a zombie not yet reaped counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


# What a collective's failure says when a peer went away (gloo, NCCL, our sharded save's words);
# an object-storage connection error is not one of them.
_PEER_WORDS = ("gloo/transport", "Connection closed by peer", "NCCL communicator was aborted",
               "the process group broke")


def lost_peer_message(exc: BaseException) -> str | None:
    """One line for a collective that failed because a peer rank went away; None otherwise.

    Names the lost rank(s) when they ran on this host (their processes have ended).
    """
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 8:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    if not any(type(e).__name__ == "DistBackendError" or any(w in str(e) for w in _PEER_WORDS) for e in chain):
        return None
    import socket
    me = dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))
    host = socket.gethostname()
    here = [(r, pid) for r, (h, pid) in enumerate(_peers) if r != me and h == host]
    lost: list[int] = []
    deadline = time.monotonic() + 2.0  # a killed process closes its sockets before it has ended
    while not lost and here and time.monotonic() < deadline:
        lost = [r for r, pid in here if _gone(pid)]
        if not lost:
            time.sleep(0.05)
    who = (f"lost rank {', '.join(map(str, lost))} (its process ended)" if lost else
           "lost a peer rank (the connection to it closed)")
    said = next((str(e).strip().splitlines()[0][:160] for e in chain if str(e).strip()), type(exc).__name__)
    return (f"rank {me}: {who}; this job cannot go on. Rerun the same command: it resumes from the "
            f"newest committed checkpoint (the failed collective said: {said})")


def attempt_store(timeout: timedelta) -> dist.Store | None:
    """After a ``--max-restarts`` restart, the launcher's store under a prefix of this attempt.

    torchrun keeps one store across restarts, and the process group's keys of the
    previous attempt (the old ranks' addresses) are still in it: new ranks would
    connect to dead ones ("Connection refused"). None on a first attempt.
    """
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if attempt == "0" or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    client = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                           int(os.environ["WORLD_SIZE"]), is_master=False, timeout=timeout)
    return dist.PrefixStore(f"/torchresume/attempt_{attempt}", client)


def die_with_launcher() -> None:
    """Linux: SIGKILL this rank when its launcher dies, so no orphan trains on (or saves)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the launcher died before prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)


def quiet() -> None:
    """Ranks other than 0 log warnings and errors only (status and monitor lines come from rank 0)."""
    log.setLevel(logging.WARNING)
    monitor.setLevel(logging.WARNING)


def prepare(model: TrainingModel, dataset: Any, callbacks: Sequence[Callback] | Callback | None,
            handle_signals: bool) -> tuple[Any, list[Callback], World]:
    """This rank's data, the callbacks with StopAgreement first, and this rank's World.

    Checkpoint callbacks are left as given: each picks its sharded storage when training begins.
    """
    from torchresume.train.stop_agreement import StopAgreement
    torchrun_options.check_callbacks(callbacks)  # before the process group and DDP: every rank refuses alike
    world = init_world(model.device)
    _wrap(model, world)
    items = [callbacks] if isinstance(callbacks, Callback) else list(callbacks or [])
    return shard_data(dataset, world), [StopAgreement(world.device, handle_signals), *items], world


def _wrap(model: TrainingModel, world: World) -> None:
    """Move the network to this rank's device; the steps run through DDP (gradients all-reduced)."""
    if model.device != world.device:
        model.device = world.device
        model.network.to(world.device)
    ids = [world.device.index] if world.device.type == "cuda" else None
    model.step_network = DistributedDataParallel(model.network, device_ids=ids)


def shard_data(dataset: Any, world: World) -> Any:
    """This rank's share: an ArrayDataset becomes its DistributedArrayDataset (global batch kept)."""
    from torchresume.data import ArrayDataset
    from torchresume.data.distributed_dataset import DistributedArrayDataset, shard
    if isinstance(dataset, DistributedArrayDataset):
        return dataset
    if isinstance(dataset, ArrayDataset):
        return shard(dataset, world.rank, world.size)
    log.warning("under torchrun the training data (%s) is used as given: each rank must already "
                "read its own share (use torchresume's ArrayDataset for an exact, elastic split)",
                type(dataset).__name__)
    return dataset


__all__ = ["World", "die_with_launcher", "end_process", "init_world", "launched", "lost_peer_message", "prepare",
           "shard_data"]
