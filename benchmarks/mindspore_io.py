"""torchresume vs MindSpore itself on a ~300 MB MindSpore .ckpt, side by side in one run.

    .venv/bin/python benchmarks/mindspore_io.py [--mb 300] [--runs 3]

Needs the MindSpore venv (bash scripts/setup_mindspore.sh). The same state (float32
tensors of 1-8 MiB, like a mid-size network) is saved and loaded, in turn, by
- MindSpore 2.10: ``save_checkpoint`` (no fsync: MindSpore never syncs) and
  ``load_checkpoint`` of the file it wrote, timed inside its own interpreter;
- torchresume: ``save_checkpoint(format="ckpt")`` (durable: fsync of the file and
  its directory included), the same bytes written without fsync (like for like
  with MindSpore), and ``load_checkpoint`` of MindSpore's file (every byte read
  into tensors, protobuf parsed, names checked).
Loads are from the page cache (each file is read once before timing). Peak memory
while loading is the peak growth of the resident set during the load (sampled every
millisecond in a fresh subprocess; ru_maxrss is inherited from the parent), against
the file's size. Medians of ``--runs``; ratios printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "format"))

MS_SIDE = r"""
import json, os, sys, time
import numpy as np, mindspore as ms
from mindspore import Tensor
ms.set_context(mode=ms.PYNATIVE_MODE, device_target="CPU")
mb, runs, directory = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rng = np.random.default_rng(0)
sizes, total = [], 0
while total < mb * 1e6:
    n = int(rng.integers(256 * 1024, 2 * 1024 * 1024))
    sizes.append(n); total += 4 * n
items = [{"name": f"layer{i}.weight", "data": Tensor(rng.standard_normal(n, dtype=np.float32))}
         for i, n in enumerate(sizes)]
path = os.path.join(directory, "ms.ckpt")
save, load = [], []
for r in range(runs):
    if os.path.exists(path):
        os.chmod(path, 0o600); os.remove(path)
    t = time.perf_counter(); ms.save_checkpoint(items, path); save.append(time.perf_counter() - t)
    ms.load_checkpoint(path)  # warm the cache
    t = time.perf_counter(); ms.load_checkpoint(path); load.append(time.perf_counter() - t)
print(json.dumps({"save": save, "load": load, "size": os.path.getsize(path), "path": path,
                  "tensors": len(items)}))
sys.stdout.flush()
os._exit(0)
"""

PEAK_SIDE = r"""
import sys, threading, time, torchresume as tr
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
base, peak, done = rss(), [0], []
def watch():
    while not done:
        peak[0] = max(peak[0], rss())
        time.sleep(0.001)
t = threading.Thread(target=watch); t.start()
params = tr.load_checkpoint(sys.argv[1])
peak[0] = max(peak[0], rss()); done.append(1); t.join()
print(peak[0] - base)
"""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    from mindspore_helpers import mindspore_python

    import torchresume as tr
    python = mindspore_python()
    if python is None:
        print("MindSpore is not installed: run `bash scripts/setup_mindspore.sh` first")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([python, "-c", MS_SIDE, str(args.mb), str(args.runs), tmp],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-2000:])
            return 1
        ms_result = json.loads(proc.stdout.strip().splitlines()[-1])
        path, size = ms_result["path"], ms_result["size"]
        tr.load_checkpoint(path)  # warm
        from torchresume.files import mindspore_io
        load: list[float] = []
        save: list[float] = []
        nosync: list[float] = []
        params = {}
        for r in range(args.runs):
            t = time.perf_counter()
            params = tr.load_checkpoint(path)
            load.append(time.perf_counter() - t)
            out = os.path.join(tmp, f"tr{r}.ckpt")
            t = time.perf_counter()
            tr.save_checkpoint(params, out, format="ckpt")
            save.append(time.perf_counter() - t)
            same = open(out, "rb").read() == open(path, "rb").read()
            os.remove(out)
            t = time.perf_counter()  # the same bytes, written like MindSpore (no fsync)
            with open(out, "wb") as f:
                for part in mindspore_io.encode(mindspore_io.entries_of(params)):
                    f.write(part)
            nosync.append(time.perf_counter() - t)
            os.remove(out)
        peak = int(subprocess.run([sys.executable, "-c", PEAK_SIDE, path], capture_output=True,
                                  text=True, check=True).stdout)
    med = statistics.median
    gb = size / 1e9
    ms_save, ms_load, tr_save, tr_load = (med(ms_result["save"]), med(ms_result["load"]),
                                          med(save), med(load))
    print(f"MindSpore .ckpt of {size / 1e6:.0f} MB ({ms_result['tensors']} float32 tensors), "
          f"medians of {args.runs}, {os.cpu_count()} cores")
    print(f"{'':28}{'save s':>8}{'GB/s':>7}{'load s':>8}{'GB/s':>7}")
    print(f"{'MindSpore 2.10 (no fsync)':28}{ms_save:8.3f}{gb / ms_save:7.2f}{ms_load:8.3f}"
          f"{gb / ms_load:7.2f}")
    print(f"{'torchresume (fsync)':28}{tr_save:8.3f}{gb / tr_save:7.2f}{tr_load:8.3f}"
          f"{gb / tr_load:7.2f}")
    tr_nosync = med(nosync)
    print(f"{'torchresume (no fsync)':28}{tr_nosync:8.3f}{gb / tr_nosync:7.2f}")
    print(f"speed-up: save {ms_save / tr_save:.2f}x durable, {ms_save / tr_nosync:.2f}x like for "
          f"like (no fsync); load {ms_load / tr_load:.2f}x "
          f"(torchresume's file is byte-identical to MindSpore's: {same})")
    print(f"peak memory while loading: {peak / 1e6:.0f} MB = {peak / size:.2f}x the file size")
    return 0


if __name__ == "__main__":
    sys.exit(main())
