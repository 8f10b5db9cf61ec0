"""One ranged GET and one part PUT by several client paths, side by side: client CPU seconds per GB.

    .venv/bin/python benchmarks/s3_paths.py [--servers hash-off] [--get-streams 4] [--put-streams 3]
                                            [--range-mib 16] [--part-mib 16] [--requests 16] [--rounds 3]

Starts `rclone serve s3` on 127.0.0.1 (as benchmarks/s3_throughput.py does) and, round
after round, runs each path ``--requests`` times (that many requests over ``--*-streams``
threads), measuring this process's CPU (all threads, ``getrusage``) per GB moved. The
destination of a GET is a buffer per thread, reused, so what is measured is the path,
not first-touch of fresh memory. Paths:

* GET s3fs cat_file + copy: what ranged downloads did before storage/s3body.py.
* GET s3body.read_range: the ranged GET's body read into our buffer (aiobotocore readinto).
* GET botocore sync, readinto: botocore's own (sync, urllib3) client; the body read with
  http.client's readinto (a private attribute): the cheapest path found, not used, since it
  needs a second client beside s3fs's with its credentials and options duplicated.
* PUT s3fs bytearray: a part as uploads sent it before storage/s3body.py.
* PUT s3body PartBuffer: a part sent as memoryview slices.
* PUT botocore sync bytearray: botocore's sync client, for comparison.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from s3_throughput import SERVER_FLAGS, start_server

MIB = 1 << 20


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def sync_client(endpoint: str) -> Any:
    import botocore.config
    import botocore.session

    from torchresume.storage.remote import botocore_config
    return botocore.session.get_session().create_client(
        "s3", endpoint_url=endpoint, aws_access_key_id="key", aws_secret_access_key="secret",
        region_name="us-east-1", config=botocore.config.Config(**botocore_config(None), max_pool_connections=8))


def get_paths(fs: Any, client: Any, size: int) -> dict[str, Callable[[memoryview], None]]:
    from torchresume.storage import s3body
    span = f"bytes=0-{size - 1}"

    def cat_file(into: memoryview) -> None:
        into[:] = fs.cat_file("bench/obj", start=0, end=size)

    def read_range(into: memoryview) -> None:
        assert s3body.read_range(fs, "bench/obj", 0, size, into) == size

    def sync_readinto(into: memoryview) -> None:
        body = client.get_object(Bucket="bench", Key="obj", Range=span)["Body"]
        fp, got = body._raw_stream._fp, 0
        while got < size:
            n = fp.readinto(into[got:])
            assert n
            got += n
        body.close()
    return {"GET s3fs cat_file + copy": cat_file, "GET s3body.read_range": read_range,
            "GET botocore sync, readinto": sync_readinto}


def put_paths(fs: Any, client: Any, size: int, upload_id: str) -> dict[str, Callable[[], None]]:
    from torchresume.storage import s3body
    data = os.urandom(size)
    plain, part = bytearray(data), s3body.part_buffer(memoryview(data))
    kw = {"Bucket": "bench", "Key": "up", "UploadId": upload_id, "PartNumber": 1}
    return {"PUT s3fs bytearray": lambda: fs.call_s3("upload_part", Body=plain, **kw),
            "PUT s3body PartBuffer": lambda: fs.call_s3("upload_part", Body=part, **kw),
            "PUT botocore sync bytearray": lambda: client.upload_part(Body=plain, **kw)}


def run(fn: Callable[[], None], requests: int, pool: ThreadPoolExecutor) -> tuple[float, float]:
    """CPU seconds and wall seconds of ``requests`` calls of ``fn`` on ``pool``."""
    c, t = cpu_seconds(), time.perf_counter()
    list(pool.map(lambda _: fn(), range(requests)))
    return cpu_seconds() - c, time.perf_counter() - t


def measure(name: str, args: argparse.Namespace) -> None:
    root = tempfile.mkdtemp(prefix="s3-paths-")
    os.makedirs(os.path.join(root, "bench"))
    server, endpoint = start_server(root, SERVER_FLAGS[name])
    os.environ.update(AWS_ACCESS_KEY_ID="key", AWS_SECRET_ACCESS_KEY="secret", AWS_ENDPOINT_URL=endpoint,
                      AWS_DEFAULT_REGION="us-east-1")
    try:
        from torchresume.storage.remote import RemoteStorage
        fs, client = RemoteStorage("s3").fs, sync_client(endpoint)
        rsize, psize = args.range_mib * MIB, args.part_mib * MIB
        fs.pipe_file("bench/obj", os.urandom(rsize))
        upload_id = fs.call_s3("create_multipart_upload", Bucket="bench", Key="up")["UploadId"]
        local = threading.local()

        def own_buffer() -> memoryview:  # one reused destination per thread
            if not hasattr(local, "buf"):
                local.buf = memoryview(bytearray(rsize))
            return local.buf
        paths: dict[str, tuple[Callable[[], None], int, int]] = {}
        for label, get in get_paths(fs, client, rsize).items():
            paths[label] = (lambda get=get: get(own_buffer()), rsize, args.get_streams)
        for label, put in put_paths(fs, client, psize, upload_id).items():
            paths[label] = (put, psize, args.put_streams)
        rows: dict[str, list[tuple[float, float]]] = {label: [] for label in paths}
        pools = {n: ThreadPoolExecutor(n) for n in {args.get_streams, args.put_streams}}
        for fn, _, streams in paths.values():
            run(fn, streams, pools[streams])  # warm: connections, buffers
        for _ in range(args.rounds):  # alternating, so that load from others falls on every path
            for label, (fn, size, streams) in paths.items():
                cpu, wall = run(fn, args.requests, pools[streams])
                gb = args.requests * size / 1e9
                rows[label].append((cpu / gb, gb * 1e3 / wall))
        fs.call_s3("abort_multipart_upload", Bucket="bench", Key="up", UploadId=upload_id)
        print(f"server [{name}]; GET {args.range_mib} MiB x {args.get_streams} streams, PUT {args.part_mib} MiB "
              f"x {args.put_streams} streams; {args.rounds} rounds of {args.requests} requests; medians")
        for label, r in rows.items():
            cpu = statistics.median(x[0] for x in r)
            mbs = statistics.median(x[1] for x in r)
            print(f"  {label:30} client CPU {cpu:5.2f} s/GB (min {min(x[0] for x in r):.2f})   "
                  f"{mbs:5.0f} MB/s (wall, noisy)")
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--servers", default="hash-off", help=f"comma-separated, of {', '.join(SERVER_FLAGS)}")
    parser.add_argument("--get-streams", type=int, default=4)
    parser.add_argument("--put-streams", type=int, default=3)
    parser.add_argument("--range-mib", type=int, default=16)
    parser.add_argument("--part-mib", type=int, default=16)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for name in args.servers.split(","):
        measure(name, args)


if __name__ == "__main__":
    main()
