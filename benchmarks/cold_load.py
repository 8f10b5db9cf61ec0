"""Cold and warm load of a ~1 GiB training state (model + Adam state), side by side in one run.

Run (as root, to drop the page cache): .venv/bin/python benchmarks/cold_load.py [--gib 1] [--runs 3]

Loads the same state saved three ways: torchresume (every tensor's checksum
verified), safetensors (``load_file``, then one byte of every 4 KiB page read so
every byte has come from the disk) and ``torch.load(weights_only=True)``. Cold:
``sync; echo 3 > /proc/sys/vm/drop_caches`` before each load; warm: the file was
just read. Beside them, the disk's sequential read bandwidth of the same
torchresume file with O_DIRECT (64 MiB aligned reads, no page cache), and the
time to write every page of the same amount of fresh memory once (a VM whose
host backs guest memory lazily pays this for every new page-cache page). Medians
over --runs, methods interleaved run by run so noise hits all of them. Without
root (no drop_caches) the cold column is skipped and the script says so.
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
from safetensors.torch import load_file as st_load
from safetensors.torch import save_file as st_save

from torchresume.files import read_checkpoint, write_checkpoint
from torchresume.state.tree import flat_view

WIDTH = 4096


def build_state(gib: float) -> dict[str, object]:
    """A stack of Linear layers and its Adam state (2 moments per weight): about ``gib`` GiB."""
    layers = max(1, round(gib * (1 << 30) / (3 * 4 * WIDTH * WIDTH)))
    model = torch.nn.Sequential(*[torch.nn.Linear(WIDTH, WIDTH) for _ in range(layers)])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict()}


def drop_caches() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def direct_read(path: str) -> None:
    """Read the whole file with O_DIRECT into one aligned 64 MiB buffer (the disk's own rate)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, 64 << 20)
    try:
        while os.readv(fd, [buf]) == len(buf):
            pass
    finally:
        os.close(fd)
        buf.close()


def touch_pages(tensors: dict[str, torch.Tensor]) -> None:
    """Read one byte of every 4 KiB page, so a lazily mapped file is read whole."""
    for t in tensors.values():
        if t.numel():
            t.reshape(-1).view(torch.uint8)[::4096].sum()


def first_touch(size: int) -> None:
    """Write every page of fresh memory once: what filling new page-cache or tensor memory costs here."""
    torch.empty(size, dtype=torch.uint8).fill_(1)


def loaders(paths: dict[str, str]) -> dict[str, Callable[[], object]]:
    size = os.path.getsize(paths["tr"])
    return {
        "torchresume (verified)": lambda: read_checkpoint(paths["tr"]).tree,
        "safetensors + touch": lambda: touch_pages(st_load(paths["st"])),
        "torch.load": lambda: torch.load(paths["pt"], map_location="cpu", weights_only=True),
        "O_DIRECT read (disk)": lambda: direct_read(paths["tr"]),
        "first touch of new RAM": lambda: first_touch(size),
    }


def timed(fn: Callable[[], object], cold: bool) -> float:
    if cold:
        drop_caches()
    else:
        fn()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def save_all(state: dict[str, object], directory: str) -> dict[str, str]:
    paths = {k: os.path.join(directory, f"state.{k}") for k in ("tr", "st", "pt")}
    write_checkpoint(paths["tr"], "state", state)
    flat = {k: v.contiguous() for k, v in flat_view(state).items() if isinstance(v, torch.Tensor)}
    st_save(flat, paths["st"])
    torch.save(state, paths["pt"])
    return paths


def report(results: dict[str, dict[str, list[float]]], size: int, cold: bool) -> None:
    med = {m: {k: statistics.median(v) for k, v in r.items() if v} for m, r in results.items()}
    tr = med["torchresume (verified)"]
    print(f"{'method':<24} {'cold s':>8} {'cold MB/s':>10} {'warm s':>8} {'warm MB/s':>10}  "
          f"{'tr speed-up cold':>16} {'warm':>6}")
    for name, m in med.items():
        cold_s = f"{m['cold']:8.3f} {size / m['cold'] / 1e6:10.0f}" if cold else f"{'-':>8} {'-':>10}"
        ratio_cold = f"{m['cold'] / tr['cold']:15.2f}x" if cold else f"{'-':>16}"
        print(f"{name:<24} {cold_s} {m['warm']:8.3f} {size / m['warm'] / 1e6:10.0f}  "
              f"{ratio_cold} {m['warm'] / tr['warm']:5.2f}x")
    print("(speed-up = that method's time / torchresume's time: > 1 means torchresume is faster)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to write the files (default: a temp dir on /tmp's disk)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    checks = measure(parser.parse_args())
    print("\ntargets:")
    for what, ok, got in checks:
        print(f"  {'met ' if ok else 'MISS'} {what}: {got}")


def measure(args: argparse.Namespace) -> list[tuple[str, bool, str]]:
    """Save the state three ways, load each cold and warm ``args.runs`` times; print; return the targets."""
    cold = drop_caches()
    if not cold:
        print("cannot drop the page cache (needs root: /proc/sys/vm/drop_caches); cold loads skipped")
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        paths = save_all(build_state(args.gib), directory)
        size = os.path.getsize(paths["tr"])
        print(f"state: {size / 2**30:.2f} GiB (model + Adam state), {args.runs} runs, medians; files in {directory}")
        results: dict[str, dict[str, list[float]]] = {m: {"cold": [], "warm": []} for m in loaders(paths)}
        for _ in range(args.runs):
            for name, fn in loaders(paths).items():
                for kind in (("cold", "warm") if cold else ("warm",)):
                    results[name][kind].append(timed(fn, kind == "cold"))
        report(results, size, cold)
    if not cold:
        return []
    med = {m: statistics.median(r["cold"]) for m, r in results.items()}
    tr, st, pt = med["torchresume (verified)"], med["safetensors + touch"], med["torch.load"]
    disk = med["O_DIRECT read (disk)"]
    return [("cold load, every checksum verified, >= safetensors reading every byte", tr <= st,
             f"{st / tr:.2f}x ({tr:.3f} vs {st:.3f} s; the disk's O_DIRECT read {disk:.3f} s)"),
            ("cold load >= 3x torch.load", tr * 3 <= pt, f"{pt / tr:.2f}x ({tr:.3f} vs {pt:.3f} s)")]


if __name__ == "__main__":
    main()
