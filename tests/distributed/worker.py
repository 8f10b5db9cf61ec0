"""The program the distributed tests launch with torchrun: one scenario per run, results as JSON.

    torchrun --nproc-per-node N tests/distributed/worker.py SCENARIO DIR OUT

Each rank writes ``OUT/rank{r}.json`` with what it observed; the tests assert on it.
Scenarios: ddp_save, ddp_restore, fsdp_save, fsdp_load, plain_load, fail_save, kill_save, restore_any,
restore_reads; async saves: async_save, async_fail, async_kill, fsdp_async_save, ddp_save_async.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import sys
import time
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from torchresume.distributed import ShardedStore
from torchresume.state.tree import map_tensors
from torchresume.train.distributed import end_process


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 16)
        self.fc2 = nn.Linear(16, 10)
        self.fc3 = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def rank() -> int:
    return dist.get_rank()


def world() -> int:
    return dist.get_world_size()


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int = 2) -> None:
    gen = torch.Generator().manual_seed(100 + rank())
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(8, 6, generator=gen)).pow(2).mean().backward()
        opt.step()


def rank_state() -> dict[str, Any]:
    torch.manual_seed(1000 + rank())
    return {"rank": rank(), "torch_rng": torch.get_rng_state(), "position": [rank() * 10, "a"],
            "noise": torch.randn(5)}


def dump(out: str, name: str, tree: Any) -> None:
    """Rank-specific reference values, written with torch.save for the comparing run."""
    torch.save(tree, os.path.join(out, name))


def tensors_equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(tensors_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def ddp_model(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.parallel.DistributedDataParallel(Net())
    return model, torch.optim.Adam(model.parameters(), lr=0.01)


def ddp_save(directory: str, out: str, async_save: bool = False) -> dict[str, Any]:
    model, opt = ddp_model(0)
    train(model, opt)
    mgr = ShardedStore(directory, prefix="ddp", keep=2, async_save=async_save)
    for step in (0, 1):  # older checkpoints: retention keeps the newest two after the last commit
        mgr.save({"model": model.state_dict()}, epoch=1, step=step)
    path = mgr.save({"model": model.state_dict(), "optim": opt.state_dict()}, epoch=1, step=2,
                    rank_state=rank_state())
    mgr.wait()  # async: committed, then retention, on every rank
    if rank() == 0:
        dump(out, "expected.pt", {"model": model.state_dict(), "optim": opt.state_dict()})
    dump(out, f"rank_state{rank()}.pt", rank_state())
    return {"path": path, "newest": mgr.newest(), "kept": sorted(os.path.basename(e.path) for e in mgr.checkpoints())}


def ddp_restore(directory: str, out: str) -> dict[str, Any]:
    model, opt = ddp_model(1)
    train(model, opt, 1)  # optimizer state exists, values differ from the saved ones
    state = {"model": model.state_dict(), "optim": opt.state_dict()}
    info = ShardedStore(directory, prefix="ddp").restore(state)
    assert info is not None
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optim"])
    expected = torch.load(os.path.join(out, "expected.pt"))
    states = [torch.load(os.path.join(out, f"rank_state{r}.pt")) for r in range(info.world_size)]
    return {"path": info.path, "epoch": info.epoch, "step": info.step, "world_size": info.world_size,
            "model_equal": tensors_equal(expected["model"], model.state_dict()),
            "optim_equal": tensors_equal(expected["optim"], opt.state_dict()),
            "rank_states_equal": [tensors_equal(a, b) for a, b in zip(states, info.rank_states, strict=True)]}


def ddp_restore_model(directory: str, out: str) -> dict[str, Any]:
    """The newest checkpoint that loads on every rank, weights only (every ddp_save checkpoint has them)."""
    model, _ = ddp_model(1)
    state = {"model": model.state_dict()}
    info = ShardedStore(directory, prefix="ddp").restore(state)
    assert info is not None
    model.load_state_dict(state["model"])
    expected = torch.load(os.path.join(out, "expected.pt"))
    return {"path": info.path, "model_equal": tensors_equal(expected["model"], model.state_dict())}


def fsdp_model(seed: int) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    torch.manual_seed(seed)
    model = Net()
    mesh = init_device_mesh("cpu", (world(),))
    for layer in (model.fc1, model.fc2, model.fc3):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
            for k, v in model.state_dict().items()}


def fsdp_save(directory: str, out: str) -> dict[str, Any]:
    model = fsdp_model(0)
    train(model, torch.optim.SGD(model.parameters(), lr=0.1))
    full = full_state(model)
    path = ShardedStore(directory, prefix="fsdp").save(
        {"model": model.state_dict()}, epoch=1, step=2, rank_state={"rank": rank()})
    if rank() == 0:
        dump(out, "expected.pt", full)
    return {"path": path, "sharded": any(hasattr(v, "full_tensor") for v in model.state_dict().values())}


def fsdp_async_save(directory: str, out: str) -> dict[str, Any]:
    """FSDP2 (DTensor shards) saved async; the sharded parameters are changed right after the call."""
    model = fsdp_model(0)
    train(model, torch.optim.SGD(model.parameters(), lr=0.1))
    full = full_state(model)
    mgr = ShardedStore(directory, prefix="fsdp", async_save=True)
    _slow_writes(1.0)
    path = mgr.save({"model": model.state_dict()}, epoch=1, step=2, rank_state={"rank": rank()})
    saving = mgr.saving
    with torch.no_grad():
        for p in model.parameters():
            p.add_(100.0)
    changed = not torch.equal(full_state(model)["fc1.weight"], full["fc1.weight"])
    mgr.close()
    if rank() == 0:
        dump(out, "expected.pt", full)
    return {"path": path, "saving": saving, "changed": changed,
            "sharded": any(hasattr(v, "full_tensor") for v in model.state_dict().values())}


def compare_loaded(directory: str, out: str, model: nn.Module) -> dict[str, Any]:
    state = {"model": model.state_dict()}
    info = ShardedStore(directory, prefix="fsdp").restore(state)
    assert info is not None
    if not any(hasattr(v, "full_tensor") for v in state["model"].values()):
        model.load_state_dict(state["model"])
    expected = torch.load(os.path.join(out, "expected.pt"))
    loaded = full_state(model)
    return {"world_size": info.world_size, "names": sorted(loaded),
            "equal": {k: torch.equal(expected[k], loaded[k]) for k in expected},
            "rank_states": list(info.rank_states)}


def fsdp_load(directory: str, out: str) -> dict[str, Any]:
    return compare_loaded(directory, out, fsdp_model(7))


def plain_load(directory: str, out: str) -> dict[str, Any]:
    torch.manual_seed(7)
    return compare_loaded(directory, out, Net())


def _fail_on_rank1(kind: str) -> None:
    """Rank 1's storage fails (ENOSPC) or the process is SIGKILLed while writing its shard."""
    if rank() != 1:
        return
    from torchresume.distributed import writer

    real = writer.write_part

    def failing(*args: Any, **kwargs: Any) -> Any:
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise OSError(28, "No space left on device (injected for rank 1)")
    writer.write_part = failing  # type: ignore[assignment]
    _ = real


def faulty_save(directory: str, out: str, kind: str) -> dict[str, Any]:
    model, opt = ddp_model(0)
    mgr = ShardedStore(directory, prefix="ddp", keep=2)
    mgr.save({"model": model.state_dict()}, epoch=1, step=1, rank_state={"rank": rank()})
    train(model, opt)
    _fail_on_rank1(kind)
    try:
        mgr.save({"model": model.state_dict()}, epoch=1, step=2, rank_state={"rank": rank()})
    except Exception as exc:
        print(f"rank {rank()}: {type(exc).__name__}: {exc}", file=sys.stderr)
        write_result(out, {"error": type(exc).__name__, "message": str(exc), "newest": mgr.newest()})
        sys.exit(1)
    return {"error": None}


def write_result(out: str, result: dict[str, Any]) -> None:
    """This rank's result, written whole or not at all (a rank may be killed at any point)."""
    target = os.path.join(out, f"rank{rank()}.json")
    with open(target + ".tmp", "w") as f:
        json.dump(result, f, default=repr)
    os.replace(target + ".tmp", target)


def restore_any(directory: str, out: str) -> dict[str, Any]:
    model, _ = ddp_model(3)
    info = ShardedStore(directory, prefix="ddp").restore({"model": model.state_dict()})
    if info is None:
        return {"path": None}
    return {"path": info.path, "epoch": info.epoch, "step": info.step, "rank_states": list(info.rank_states)}


class CountedReads:
    """Every file under ``root`` this process opens for reading, and the bytes it reads from each
    (``read``/``readinto`` results, plus the length of each ``mmap`` of it): the real files, read."""

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)
        self.nbytes: dict[str, int] = {}
        self._names: dict[int, str] = {}

    def __enter__(self) -> CountedReads:
        import builtins
        import mmap
        self._open, self._mmap, self._fdopen = builtins.open, mmap.mmap, os.fdopen
        builtins.open, mmap.mmap = self._counted_open, self._counted_mmap  # type: ignore[assignment,misc]
        os.fdopen = self._counted_fdopen  # local reads open the fd themselves (no link followed)
        return self

    def __exit__(self, *exc: Any) -> None:
        import builtins
        import mmap
        builtins.open, mmap.mmap = self._open, self._mmap  # type: ignore[misc]
        os.fdopen = self._fdopen

    def _counted_fdopen(self, fd: int, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        return self._counted(self._fdopen(fd, mode, *args, **kwargs), os.readlink(f"/proc/self/fd/{fd}"), mode)

    def _counted_open(self, file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = self._open(file, mode, *args, **kwargs)
        return f if isinstance(file, int) else self._counted(f, file, mode)

    def _counted(self, f: Any, file: Any, mode: str) -> Any:
        if "r" in mode and os.path.realpath(file).startswith(self.root):
            name = os.path.basename(file)
            self.nbytes.setdefault(name, 0)
            self._names[f.fileno()] = name
            return _Counting(f, lambda n: self._add(name, n))
        return f

    def _counted_mmap(self, fileno: int, length: int, *args: Any, **kwargs: Any) -> Any:
        mapped = self._mmap(fileno, length, *args, **kwargs)
        if fileno in self._names:
            self._add(self._names[fileno], len(mapped))
        return mapped

    def _add(self, name: str, n: int) -> None:
        self.nbytes[name] = self.nbytes.get(name, 0) + n


class _Counting:
    """A file whose reads report their byte counts; everything else is the file's own."""

    def __init__(self, f: Any, add: Any) -> None:
        self._f, self._add = f, add

    def read(self, *args: Any) -> Any:
        data = self._f.read(*args)
        self._add(len(data))
        return data

    def readinto(self, buf: Any) -> Any:
        n = self._f.readinto(buf)
        self._add(n or 0)
        return n

    def __enter__(self) -> _Counting:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._f.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def restore_reads(directory: str, out: str) -> dict[str, Any]:
    """FSDP2 state restored with every file read counted: which parts this rank opened, and bytes."""
    model = fsdp_model(7)
    state = {"model": model.state_dict()}
    mgr = ShardedStore(directory, prefix="fsdp")
    with CountedReads(directory) as reads:
        info = mgr.restore(state)
    assert info is not None
    read_before_asked = info.rank_states.read  # type: ignore[attr-defined]
    with CountedReads(directory) as later:
        others = list(info.rank_states)  # now every old part, each read here, by this rank
    return {"world_size": info.world_size, "rank_state": info.rank_state, "read": reads.nbytes,
            "read_before_asked": read_before_asked, "later": later.nbytes, "rank_states": others,
            "equal": all(torch.equal(a, b) for a, b in zip(full_state(model).values(),
                                                            torch.load(os.path.join(out, "expected.pt")).values(),
                                                            strict=True))}


class Payload:
    """Rank 0's payload bytes in tensor collectives while on: what it sends, counted once per rank
    that gets it, and what it gets from the others (as benchmarks/distributed_scale.py counts)."""

    NAMES = ("broadcast", "all_gather", "gather", "scatter")

    def __init__(self) -> None:
        import torch.distributed.distributed_c10d as c10d
        self.on, self.sent, self.received = False, 0, 0
        for name in self.NAMES:
            setattr(c10d, name, self._counted(name, getattr(c10d, name)))

    def _counted(self, name: str, real: Any) -> Any:
        def nbytes(t: Any) -> int:
            return sum(nbytes(x) for x in t) if isinstance(t, list) else int(t.numel() * t.element_size())

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.on and rank() == 0:
                others = world() - 1
                if name == "broadcast":
                    self.sent += nbytes(args[0]) * others
                elif name == "all_gather":
                    self.sent += nbytes(args[1]) * others
                    self.received += nbytes(args[0]) - nbytes(args[1])
                elif name == "gather":
                    gathered = kwargs.get("gather_list") or args[1]
                    self.received += nbytes(gathered[1:])
                else:
                    scattered = kwargs.get("scatter_list") or args[1]
                    self.sent += nbytes(scattered[1:])
            return real(*args, **kwargs)
        return call


def scale_probe(directory: str, out: str) -> dict[str, Any]:
    """Replicated state (as DDP holds it) saved three times (the plan reused by the last two), rank 0's
    collective payload in the last save counted; then restored with every file read counted."""
    state = {"model": {f"w{i}": torch.full((64,), float(i)) for i in range(48)}}
    payload = Payload()
    mgr = ShardedStore(directory, prefix="scale", keep=1)
    for step in range(3):
        payload.on = step == 2
        mgr.save(state, epoch=1, step=step, rank_state={"rank": rank()})
    payload.on = False
    restored = {"model": {k: torch.zeros_like(v) for k, v in state["model"].items()}}
    with CountedReads(directory) as reads:
        info = mgr.restore(restored)
    assert info is not None
    mgr.close()
    return {"sent": payload.sent, "received": payload.received, "read": reads.nbytes,
            "equal": all(torch.equal(restored["model"][k], v) for k, v in state["model"].items())}


def _slow_writes(seconds: float, kill_rank: int | None = None) -> None:
    """Every part write of this rank sleeps ``seconds`` first (rank ``kill_rank`` is SIGKILLed instead)."""
    from torchresume.distributed import writer

    real = writer.write_part

    def slow(*args: Any, **kwargs: Any) -> Any:
        if rank() == kill_rank:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(seconds)
        return real(*args, **kwargs)
    writer.write_part = slow  # type: ignore[assignment]


def _listing(directory: str) -> dict[str, bool]:
    """Each entry of ``directory`` and whether it holds a manifest (the commit)."""
    return {n: os.path.exists(os.path.join(directory, n, "manifest.json")) for n in sorted(os.listdir(directory))}


def async_save(directory: str, out: str) -> dict[str, Any]:
    """Async saves: the call returns before the write, later updates are not written, commit then retention."""
    model, opt = ddp_model(0)
    train(model, opt)
    mgr = ShardedStore(directory, prefix="ddp", keep=2, async_save=True)
    for step in (0, 1):  # the second waits for the first; same layout: the staging buffers are reused
        mgr.save({"model": model.state_dict()}, epoch=1, step=step)
    mgr.wait()
    allocations_before = mgr.slot._stager.buffers.allocations if mgr.slot._stager else -1
    newest_before = mgr.newest()
    train(model, opt)
    state = {"model": model.state_dict(), "optim": opt.state_dict()}
    expected = copy.deepcopy(state)
    live_rank_state = rank_state()
    dump(out, f"rank_state{rank()}.pt", copy.deepcopy(live_rank_state))
    if rank() == 0:
        dump(out, "expected.pt", expected)
    _slow_writes(2.0)
    start = time.monotonic()
    path = mgr.save(state, epoch=1, step=2, rank_state=live_rank_state)
    returned_s = time.monotonic() - start
    saving_at_return = mgr.saving
    with torch.no_grad():  # in place, right after the call: the checkpoint must not see any of it
        for p in model.parameters():
            p.add_(100.0)
        for per_param in opt.state.values():
            for v in per_param.values():
                if isinstance(v, torch.Tensor):
                    v.add_(7.0)
    live_rank_state["noise"].add_(1.0)
    live_rank_state["position"][0] = -1
    changed = not torch.equal(expected["model"]["module.fc1.weight"], model.state_dict()["module.fc1.weight"])
    newest_during = mgr.newest()
    listing_during = _listing(directory)
    saving_during = mgr.saving
    mgr.wait()
    newest_after = mgr.newest()
    listing_after = _listing(directory)
    allocations_after = mgr.slot._stager.buffers.allocations if mgr.slot._stager else -1
    mgr.close()
    return {"path": path, "returned_s": returned_s, "saving_at_return": saving_at_return,
            "saving_during": saving_during, "changed": changed, "newest_before": newest_before,
            "newest_during": newest_during, "listing_during": listing_during, "newest_after": newest_after,
            "listing_after": listing_after, "allocations_before": allocations_before,
            "allocations_after": allocations_after}


def async_kill(directory: str, out: str) -> dict[str, Any]:
    """Rank 1 is SIGKILLed while its background write runs; rank 0 waits for the save."""
    model, opt = ddp_model(0)
    mgr = ShardedStore(directory, prefix="ddp", keep=2, async_save=True)
    mgr.save({"model": model.state_dict()}, epoch=1, step=1, rank_state={"rank": rank()})
    mgr.wait()
    train(model, opt)
    _slow_writes(0.5, kill_rank=1)
    mgr.save({"model": model.state_dict()}, epoch=1, step=2, rank_state={"rank": rank()})
    try:
        mgr.close()
    except Exception as exc:
        write_result(out, {"error": type(exc).__name__, "message": str(exc)})
        sys.exit(1)
    return {"error": None}


def async_fail(directory: str, out: str) -> dict[str, Any]:
    """Rank 1's storage fails in the background write; the next save raises on every rank."""
    model, opt = ddp_model(0)
    mgr = ShardedStore(directory, prefix="ddp", keep=1, async_save=True)
    mgr.save({"model": model.state_dict()}, epoch=1, step=1, rank_state={"rank": rank()})
    mgr.wait()
    train(model, opt)
    _fail_on_rank1("fail")
    mgr.save({"model": model.state_dict()}, epoch=1, step=2, rank_state={"rank": rank()})  # returns
    try:
        mgr.save({"model": model.state_dict()}, epoch=1, step=3, rank_state={"rank": rank()})
    except Exception as exc:
        newest = mgr.newest()
        mgr.close()
        return {"error": type(exc).__name__, "message": str(exc), "newest": newest}
    return {"error": None}


def _replica(extra: int = 0) -> dict[str, Any]:
    """What DDP holds: the same tensors on every rank (sizes 1..24 KiB and a larger one), a tuple of
    tensors (DCP writes a tuple whole, as bytes: Adam's tensor ``betas``) and a non-tensor value;
    ``extra`` adds that many tensors."""
    gen = torch.Generator().manual_seed(5)
    model = {f"t{i:02d}": torch.randn(256 * (i + 1), generator=gen) for i in range(24 + extra)}
    return {"model": model, "big": {"w": torch.randn(64, 256, generator=gen)},
            "optim": {"betas": (torch.tensor(0.9), torch.tensor(0.999))}, "meta": {"lr": 0.1}}


def _live(state: dict[str, Any]) -> list[torch.Tensor]:
    """The tensors a step changes in place."""
    return [*state["model"].values(), *state["optim"]["betas"]]


def _written_per_rank(path: str) -> list[int]:
    """Bytes of the shard parts each rank wrote into the checkpoint ``path``."""
    sizes = [0] * world()
    for name in os.listdir(path):
        if name.startswith("shard-"):
            sizes[int(name.split("-")[1])] += os.path.getsize(os.path.join(path, name))
    return sizes


def lean_staging(directory: str, out: str) -> dict[str, Any]:
    """Async saves of replicated state: how many bytes each rank stages per save, what each rank
    wrote, and every checkpoint restored bitwise. Saves 1-3 share one layout; save 4 adds a tensor
    on every rank, save 5 one on rank 1 only (the ranks no longer agree: everything is staged)."""
    mgr = ShardedStore(directory, prefix="lean", keep=10, async_save=True)
    state, expected, staged, paths = _replica(), {}, [], []
    for step in range(1, 6):
        if step == 4:
            state = _replica(extra=1)
        if step == 5 and rank() == 1:
            state["model"]["only1"] = torch.arange(512.0)
        for t in _live(state):
            t.add_(step)
        paths.append(mgr.save(state, epoch=1, step=step))
        staged.append(mgr._stager.buffers.nbytes)
        expected[step] = copy.deepcopy(state)
        for t in _live(state):
            t.mul_(-3.0)  # the live state moves on while the save is written
        mgr.wait()
    equal = {}
    for step, path in enumerate(paths, start=1):
        into = {**map_tensors(expected[step], torch.zeros_like), "meta": {"lr": 0.0}}
        assert mgr.restore(into, path=path) is not None
        equal[step] = tensors_equal(into, expected[step])
    mgr.close()
    tensors: list[torch.Tensor] = []
    map_tensors(_replica(), tensors.append)
    replica = sum(t.numel() * t.element_size() for t in tensors)
    largest = 64 * 256 * 4
    return {"staged": staged, "replica": replica, "largest": largest, "equal": equal,
            "written": _written_per_rank(paths[1]) if rank() == 0 else None}


SCENARIOS = {"async_save": async_save, "lean_staging": lean_staging, "async_kill": async_kill, "async_fail": async_fail,
             "fsdp_async_save": fsdp_async_save,
             "ddp_save_async": lambda d, o: ddp_save(d, o, async_save=True),
             "restore_any": restore_any, "restore_reads": restore_reads, "scale_probe": scale_probe,
             "ddp_save": ddp_save,
             "ddp_restore": ddp_restore, "ddp_restore_model": ddp_restore_model, "fsdp_save": fsdp_save,
             "fsdp_load": fsdp_load, "plain_load": plain_load,
             "fail_save": lambda d, o: faulty_save(d, o, "fail"),
             "kill_save": lambda d, o: faulty_save(d, o, "kill")}


def main() -> None:
    scenario, directory, out = sys.argv[1:4]
    os.makedirs(out, exist_ok=True)
    dist.init_process_group("gloo")
    try:
        write_result(out, SCENARIOS[scenario](directory, out))
    except BaseException:
        dist.destroy_process_group()
        raise
    end_process(0)  # gloo's rare SIGABRT in the interpreter's teardown is not what these tests are about


if __name__ == "__main__":
    main()
