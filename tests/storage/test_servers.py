"""The S3 server fixtures say in one line why a server is not there (issue 36): a server that cannot
start, or one gone mid-session, fails the tests that need it with its state and its log's end."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.storage.conftest import RcloneServer


def test_a_server_that_cannot_start_fails_in_one_line_with_its_log(tmp_path: Path) -> None:
    with pytest.raises(pytest.fail.Exception) as failed:
        RcloneServer(tmp_path, tmp_path / "serve.log", extra=("--no-such-flag",))
    message = str(failed.value)
    assert "\n" not in message
    assert message.startswith("rclone serve s3 did not start (exited with code 2 after ")
    assert "its log: " in message and "unknown flag: --no-such-flag" in message


def test_a_server_gone_mid_session_fails_the_next_test_in_one_line(tmp_path: Path) -> None:
    server = RcloneServer(tmp_path, tmp_path / "serve.log")
    server.check_alive()  # up: nothing to say
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait()
    with pytest.raises(pytest.fail.Exception) as failed:
        server.check_alive()
    message = str(failed.value)
    assert "\n" not in message
    assert message.startswith(f"rclone serve s3 at {server.endpoint} is gone (exited with code -9 after ")
    assert "Starting s3 server on [" in message  # the log's end
    server.stop()
