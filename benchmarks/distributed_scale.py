"""Sharded save and restore from 2 to 32 ranks, side by side with DCP's FileSystemWriter/Reader (issue 23).

Run: .venv/bin/python benchmarks/distributed_scale.py --worlds 2 4 8 16 32 [--tensors 300] [--numel 256]
         [--big-gib 1.0] [--big-worlds 2 4] [--repeat 3] [--record]

Two cases, each world size one ``torchrun --standalone`` (gloo, CPU, every rank on this machine):

* ``small``: ``--tensors`` replicated float32 tensors of ``--numel`` elements (what DDP holds: the
  same values on every rank), so the time is the protocol (plans, collectives, commit), not the disk;
* ``big``: ``--big-gib`` GiB of 64 MiB float32 tensors sharded by rows over the ranks as DTensors (as
  FSDP2 holds them), at ``--big-worlds`` only.

In the same processes, alternating which goes first every repeat (the machine is shared), each rank
saves and restores the same state with ShardedStore (synchronous, ``keep=1``, a
``rank_state`` of the rank's RNG state and a position, as the trainer saves) and with
``dcp.save``/``dcp.load`` through DCP's own FileSystemWriter/FileSystemReader (defaults). Per save
and per restore it measures, inside this benchmark's processes only:

* time: barrier to the end of the call, the slowest rank's;
* rank 0's CPU time (``time.process_time``: every thread of the process, gloo's included);
* collectives: every torch.distributed tensor collective called (an object collective such as
  ``all_gather_object`` is the two or three tensor collectives it is made of), counted by wrapping
  the functions of ``torch.distributed.distributed_c10d``;
* rank 0's payload bytes sent and received in those collectives: what it contributes counted once
  per rank that gets it (a broadcast of n bytes from rank 0 to W-1 ranks sends n x (W-1)), and what
  it gets from the other ranks; the wire bytes of gloo's algorithms differ, the growth does not;
* bytes and files read per rank on restore: every file under the checkpoint root opened through
  ``open`` is wrapped, and the bytes its ``read``/``readinto`` return plus the length of every
  ``mmap`` of it are summed (torchresume maps local part files and checksums every mapped byte).

Figures are medians over ``--repeat`` rounds. Saves fsync. Before each restore the checkpoint's files
are dropped from the page cache (``posix_fadvise DONTNEED``, no root needed), so both methods read
from the disk, as after a restart (``--warm``: not dropped). DCP has no per-rank state of its own: its saves write the
tensors only, torchresume's also each rank's ``rank_state`` part.
"""

from __future__ import annotations

import argparse
import builtins
import io
import json
import mmap
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TENSOR_MIB = 64
COLLECTIVES = ("broadcast", "all_reduce", "reduce", "all_gather", "all_gather_into_tensor", "gather",
               "scatter", "reduce_scatter", "reduce_scatter_tensor", "all_to_all", "all_to_all_single",
               "barrier", "monitored_barrier", "send", "recv", "isend", "irecv")


# -- the state ----------------------------------------------------------------------------------
def small_state(tensors: int, numel: int) -> dict[str, Any]:
    """``tensors`` replicated tensors: the same values on every rank (a DDP replica)."""
    import torch
    gen = torch.Generator().manual_seed(0)
    return {"model": {f"layer{i}.weight": torch.randn(numel, generator=gen) for i in range(tensors)}}


def big_state(gib: float) -> dict[str, Any]:
    """``gib`` GiB of 64 MiB tensors, each sharded by rows over the ranks (DTensor, as FSDP2)."""
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard
    world, rank = dist.get_world_size(), dist.get_rank()
    mesh = init_device_mesh("cpu", (world,))
    cols = 1024
    rows = TENSOR_MIB * 2**20 // 4 // cols
    gen = torch.Generator().manual_seed(rank)
    return {"model": {f"layer{i}.weight": DTensor.from_local(torch.randn(rows // world, cols, generator=gen), mesh,
                                                             [Shard(0)])
                      for i in range(max(1, round(gib * 1024 / TENSOR_MIB)))}}


# -- what is counted ------------------------------------------------------------------------------
def _nbytes(value: Any) -> int:
    import torch
    if isinstance(value, torch.Tensor):
        return int(value.numel() * value.element_size())
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 0


def _others(pieces: Any, me: int) -> int:
    """The bytes of every piece of a per-rank list but this rank's own."""
    return sum(_nbytes(p) for i, p in enumerate(pieces or []) if i != me)


def _root(name: str, arg: Callable[[int, str], Any], kwargs: dict[str, Any]) -> int:
    """The global rank a broadcast or scatter comes from, or a gather goes to (``src``/``dst``, or
    ``group_src``/``group_dst``, which the object collectives pass)."""
    import torch.distributed as dist
    if name not in ("broadcast", "gather", "scatter"):
        return -1
    key = "dst" if name == "gather" else "src"
    given = arg(2 if name != "broadcast" else 1, key)
    if given is not None:
        return int(given)
    in_group = kwargs.get(f"group_{key}") or 0
    group = kwargs.get("group")
    return int(in_group if group is None else dist.get_global_rank(group, in_group))


def payload(name: str, args: tuple[Any, ...], kwargs: dict[str, Any], me: int, world: int) -> tuple[int, int]:
    """(sent, received) payload bytes of one tensor collective on global rank ``me``."""
    def arg(i: int, key: str) -> Any:
        return kwargs[key] if key in kwargs else (args[i] if len(args) > i else None)
    fanout = world - 1
    root = _root(name, arg, kwargs)
    if name == "broadcast":
        n = _nbytes(arg(0, "tensor"))
        return (n * fanout, 0) if root == me else (0, n)
    if name == "all_gather":
        return _nbytes(arg(1, "tensor")) * fanout, _others(arg(0, "tensor_list"), me)
    if name == "all_gather_into_tensor":
        own = _nbytes(arg(1, "input_tensor"))
        return own * fanout, _nbytes(arg(0, "output_tensor")) - own
    if name == "gather":
        return (0, _others(arg(1, "gather_list"), me)) if root == me else (_nbytes(arg(0, "tensor")), 0)
    if name == "scatter":
        return (_others(arg(1, "scatter_list"), me), 0) if root == me else (0, _nbytes(arg(0, "tensor")))
    if name in ("all_reduce", "reduce"):
        n = _nbytes(arg(0, "tensor"))
        return n * fanout, n * fanout
    return 0, 0


class Collectives:
    """Counts the tensor collectives called (outermost only) and this rank's payload bytes."""

    def __init__(self) -> None:
        self.on = False
        self.calls = self.sent = self.received = 0
        self._inside = threading.local()

    def install(self) -> None:
        import torch.distributed as dist
        import torch.distributed.distributed_c10d as c10d
        for name in COLLECTIVES:
            original = getattr(c10d, name, None)
            if original is not None:
                wrapped = self._wrap(name, original)
                setattr(c10d, name, wrapped)
                if getattr(dist, name, None) is original:
                    setattr(dist, name, wrapped)

    def _wrap(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        import torch.distributed as dist

        def counted(*args: Any, **kwargs: Any) -> Any:
            if not self.on or getattr(self._inside, "depth", 0):
                return original(*args, **kwargs)
            self._inside.depth = 1
            try:
                sent, received = payload(name, args, kwargs, dist.get_rank(), dist.get_world_size())
                self.calls += 1
                self.sent += sent
                self.received += received
                return original(*args, **kwargs)
            finally:
                self._inside.depth = 0
        return counted

    def start(self) -> None:
        self.calls = self.sent = self.received = 0
        self.on = True

    def stop(self) -> dict[str, int]:
        self.on = False
        return {"collectives": self.calls, "sent": self.sent, "received": self.received}


class CountedFile:
    """A file opened under the benchmark's root: the bytes its reads return are added to ``reads``."""

    def __init__(self, f: Any, reads: Reads) -> None:
        self._f, self._reads = f, reads

    def read(self, *args: Any) -> Any:
        data = self._f.read(*args)
        self._reads.nbytes += len(data)
        return data

    def read1(self, *args: Any) -> Any:
        data = self._f.read1(*args)
        self._reads.nbytes += len(data)
        return data

    def readinto(self, buf: Any) -> Any:
        n = self._f.readinto(buf)
        self._reads.nbytes += n or 0
        return n

    def readline(self, *args: Any) -> Any:
        data = self._f.readline(*args)
        self._reads.nbytes += len(data)
        return data

    def __iter__(self) -> Any:
        return iter(self.readline, b"" if "b" in getattr(self._f, "mode", "b") else "")

    def __enter__(self) -> CountedFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._f.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


class Reads:
    """Files opened for reading under ``root`` and the bytes read from them (reads and mmaps)."""

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)
        self.on = False
        self.nbytes = self.files = 0
        self._fds: set[int] = set()

    def install(self) -> None:
        real_open, real_mmap = builtins.open, mmap.mmap

        def counted_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            f = real_open(file, mode, *args, **kwargs)
            if not self.on or "r" not in mode or isinstance(file, int):
                return f
            if not os.path.realpath(os.fspath(file)).startswith(self.root):
                return f
            self.files += 1
            self._fds.add(f.fileno())
            return CountedFile(f, self)

        def counted_mmap(fileno: int, length: int, *args: Any, **kwargs: Any) -> Any:
            mapped = real_mmap(fileno, length, *args, **kwargs)
            if self.on and fileno in self._fds:
                self.nbytes += len(mapped)
            return mapped

        builtins.open = counted_open  # type: ignore[assignment]
        io.open = counted_open  # type: ignore[assignment]  # pathlib opens through io.open
        mmap.mmap = counted_mmap  # type: ignore[assignment,misc]

    def start(self) -> None:
        self.nbytes = self.files = 0
        self._fds.clear()
        self.on = True

    def stop(self) -> dict[str, int]:
        self.on = False
        return {"read_bytes": self.nbytes, "files": self.files}


# -- the two methods --------------------------------------------------------------------------
# (save, restore, settle): settle runs between the two, outside the timings, for work a save left in
# the background (torchresume's retention deletes the older checkpoint off the training thread).
Pair = tuple[Callable[[int], Any], Callable[[int], Any], Callable[[], Any]]


def torchresume_pair(state: dict[str, Any], root: str) -> Pair:
    import logging

    import torch
    import torch.distributed as dist

    from torchresume.distributed import ShardedStore
    logging.getLogger("torchresume").setLevel(logging.WARNING)  # no "resumed from" line per restore
    mgr = ShardedStore(os.path.join(root, "tr"), prefix="bench", keep=1)
    own = {"rng": torch.get_rng_state(), "position": [dist.get_rank(), 0]}
    return (lambda i: mgr.save(state, epoch=1, step=i, rank_state=own)), (lambda i: mgr.restore(state)), mgr.wait


def dcp_pair(state: dict[str, Any], root: str) -> Pair:
    import torch.distributed.checkpoint as dcp
    return (lambda i: dcp.save(state, storage_writer=dcp.FileSystemWriter(os.path.join(root, f"dcp{i}"))),
            lambda i: dcp.load(state, storage_reader=dcp.FileSystemReader(os.path.join(root, f"dcp{i}"))),
            lambda: None)


METHODS = {"torchresume": torchresume_pair, "dcp": dcp_pair}


# -- one torchrun ---------------------------------------------------------------------------------
def measured(fn: Callable[[int], Any], i: int, coll: Collectives, reads: Reads) -> dict[str, float]:
    """One call of ``fn`` between barriers: this rank's seconds, CPU seconds, collectives and reads."""
    import torch.distributed as dist
    dist.barrier()
    coll.start()
    reads.start()
    cpu, start = time.process_time(), time.perf_counter()
    fn(i)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    counts = {**coll.stop(), **reads.stop()}
    dist.barrier()
    return {"s": wall, "cpu_s": cpu, **counts}


def evict(root: str) -> None:
    """Rank 0, outside the timings: drop every checkpoint file's pages from the page cache
    (``POSIX_FADV_DONTNEED``; the files are durable, both methods fsync), so each restore reads
    from the disk as after a restart. torchresume writes large parts with O_DIRECT (never cached)
    and DCP through the page cache: a restore of what was just written is otherwise warm for one only."""
    for folder, _, names in os.walk(root):
        for name in names:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _clear(root: str) -> None:
    """Rank 0, outside the timings: remove DCP's checkpoints (torchresume's retention keeps one)."""
    for entry in Path(root).iterdir():
        if entry.is_dir() and entry.name.startswith("dcp"):
            shutil.rmtree(entry, ignore_errors=True)


def worker(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    from torchresume.distributed import end_process
    dist.init_process_group("gloo")
    state = small_state(args.tensors, args.numel) if args.case == "small" else big_state(args.gib)
    coll, reads = Collectives(), Reads(args.dir)
    coll.install()
    reads.install()
    pairs = {name: make(state, args.dir) for name, make in METHODS.items()}
    samples: dict[str, list[dict[str, dict[str, float]]]] = {name: [] for name in METHODS}
    order = list(METHODS)
    for i in range(args.repeat):
        for name in order:
            save, load, settle = pairs[name]
            saved = measured(save, i, coll, reads)
            settle()  # DCP's deletes (_clear, below) are outside the timings too
            if dist.get_rank() == 0 and not args.warm:
                evict(args.dir)
            samples[name].append({"save": saved, "restore": measured(load, i, coll, reads)})
            if dist.get_rank() == 0:
                _clear(args.dir)
            dist.barrier()
        order.reverse()
    every: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every, samples)
    if dist.get_rank() == 0:
        Path(args.out).write_text(json.dumps(summary(every, dist.get_world_size())))
    end_process(0)


def summary(every: list[dict[str, Any]], world: int) -> dict[str, Any]:
    """Per method and operation: medians over the repeats of the slowest rank's time, rank 0's
    CPU, collectives and payload bytes, and the most any rank read."""
    out: dict[str, Any] = {"ranks": world}
    for name in METHODS:
        for op in ("save", "restore"):
            rounds = [[rank[name][r][op] for rank in every] for r in range(len(every[0][name]))]

            def med(pick: Callable[[list[dict[str, float]]], float], rounds: list[Any] = rounds) -> float:
                return statistics.median(pick(ranks) for ranks in rounds)
            out[f"{name}_{op}"] = {
                "s": med(lambda ranks: max(r["s"] for r in ranks)),
                "r0_cpu_s": med(lambda ranks: ranks[0]["cpu_s"]),
                "collectives": med(lambda ranks: ranks[0]["collectives"]),
                "r0_sent": med(lambda ranks: ranks[0]["sent"]),
                "r0_received": med(lambda ranks: ranks[0]["received"]),
                "read_max": med(lambda ranks: max(r["read_bytes"] for r in ranks)),
                "read_r0": med(lambda ranks: ranks[0]["read_bytes"]),
                "files_max": med(lambda ranks: max(r["files"] for r in ranks)),
            }
    return out


def launch(world: int, case: str, args: argparse.Namespace) -> dict[str, Any]:
    root = tempfile.mkdtemp(prefix="dist-scale-", dir=args.dir)
    out = os.path.join(root, "result.json")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world),
           __file__, "--worker", "--case", case, "--tensors", str(args.tensors), "--numel", str(args.numel),
           "--gib", str(args.big_gib), "--repeat", str(args.repeat), "--dir", root, "--out", out,
           *(["--warm"] if args.warm else [])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"torchrun at {world} ranks ({case}) failed with {done.returncode}:\n{done.stderr[-4000:]}")
        return {"case": case, **json.loads(Path(out).read_text())}
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- the table ----------------------------------------------------------------------------------
def _size(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


HEAD = (f"{'ranks':>5} {'method':<11} {'time s':>8} {'tr/DCP':>6} {'r0 CPU s':>8} {'r0 sent':>10} "
        f"{'r0 recv':>10} {'colls':>5} {'read/rank':>10} {'files/rank':>10}")


def lines(rows: list[dict[str, Any]], op: str) -> list[str]:
    """One line per world size and method for ``op`` (save or restore)."""
    out = [HEAD]
    for row in rows:
        for name in METHODS:
            m, ratio = row[f"{name}_{op}"], row[f"torchresume_{op}"]["s"] / row[f"dcp_{op}"]["s"]
            out.append(f"{row['ranks']:>5} {name:<11} {m['s']:>8.3f} "
                       f"{(f'{ratio:.2f}' if name == 'torchresume' else ''):>6} {m['r0_cpu_s']:>8.3f} "
                       f"{_size(m['r0_sent']):>10} {_size(m['r0_received']):>10} {m['collectives']:>5.0f} "
                       f"{_size(m['read_max']):>10} {m['files_max']:>10.0f}")
    return out


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    cases = {"small": f"{args.tensors} replicated float32 tensors of {args.numel} elements "
                      f"({_size(4 * args.tensors * args.numel)} in all)",
             "big": f"{args.big_gib:g} GiB of 64 MiB float32 tensors, sharded by rows (DTensor)"}
    text = []
    for case, title in cases.items():
        rows = [r for r in results if r["case"] == case]
        if not rows:
            continue
        for op in ("save", "restore"):
            cold = "" if op == "save" or args.warm else " (cold: files dropped from the page cache)"
            text += [f"== {case}: {title}; {op}{cold}, median of {args.repeat}", *lines(rows, op), ""]
    return "\n".join(text)


def record_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        for name in METHODS:
            for op in ("save", "restore"):
                rows.append({"case": r["case"], "ranks": r["ranks"], "method": name, "op": op,
                             **r[f"{name}_{op}"]})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worlds", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    p.add_argument("--tensors", type=int, default=300, help="replicated tensors of the small case")
    p.add_argument("--numel", type=int, default=256, help="float32 elements per small tensor")
    p.add_argument("--big-gib", type=float, default=1.0, help="size of the sharded case (0: skip it)")
    p.add_argument("--big-worlds", type=int, nargs="*", default=[2, 4])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--warm", action="store_true", help="restore from the page cache (no eviction)")
    p.add_argument("--dir", default=None, help="where to write (default: the system temp dir)")
    p.add_argument("--record", action="store_true", help="store the rows in benchmarks/results.json")
    p.add_argument("--results", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--case", default="small", help=argparse.SUPPRESS)
    p.add_argument("--gib", type=float, default=1.0, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    results = []
    for world in args.worlds:
        results.append(launch(world, "small", args))
    for world in args.big_worlds if args.big_gib > 0 else []:
        results.append(launch(world, "big", args))
    print(report(results, args), flush=True)
    if args.record:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import results as results_file
        kwargs = {"path": Path(args.results)} if args.results else {}
        results_file.record("distributed_scale", record_rows(results), units={
            "s": "s (slowest rank)", "r0_cpu_s": "CPU s on rank 0", "r0_sent": "B", "r0_received": "B",
            "read_max": "B (the most any rank read)", "files_max": "files (the most any rank opened)"},
            notes="medians; payload bytes of tensor collectives, counted in the benchmark's processes", **kwargs)


if __name__ == "__main__":
    main()
