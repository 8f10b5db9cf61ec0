"""The command line against a second S3 implementation (rclone serve s3), as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TR = str(Path(sys.executable).with_name("torchresume"))


def run(*args: str, check: int | None = 0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([TR, *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert "Traceback" not in proc.stderr, proc.stderr
    if check is not None:
        assert proc.returncode == check, (args, proc.stdout, proc.stderr)
    return proc


def test_train_resume_ls_inspect_verify_on_rclone(rclone_bucket) -> None:
    url = rclone_bucket + "/run"
    cmd = ["train", "--train-url", url, "--steps-per-epoch", "10", "--save-steps", "5", "--print-every", "100"]
    first = run(*cmd, "--epochs", "1")
    assert f"done: 10 steps; latest checkpoint {url}/lenet-1_10.ckpt" in first.stdout
    assert f"torchresume: uploaded {url}/lenet-1_10.ckpt (" in first.stdout
    second = run(*cmd, "--epochs", "2")
    assert f"resumed from {url}/lenet-1_10.ckpt at epoch 1, step 10" in second.stdout
    lines = run("ls", url).stdout.splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["lenet-2_10.ckpt", "lenet-2_5.ckpt", "lenet-1_10.ckpt",
                                                       "lenet-1_5.ckpt"]
    assert all(line.endswith("valid") for line in lines[1:])
    assert "kind:" in run("inspect", f"{url}/lenet-2_10.ckpt").stdout
    assert run("verify", f"{url}/lenet-2_10.ckpt").stdout == f"OK       {url}/lenet-2_10.ckpt\n"
    assert run("diff", f"{url}/lenet-2_10.ckpt", f"{url}/lenet-2_10.ckpt").stdout.startswith("identical")


def test_a_refused_connection_fails_in_seconds_with_one_line(monkeypatch, tmp_path) -> None:
    """Nothing listens at the endpoint: one line naming it, within 3x the time of the same command
    failing on a local path (the same start-up work); it took ~40 s of hidden botocore and s3fs
    retries before."""
    import time
    missing = str(tmp_path / "missing")
    # train's local failure is a damaged --resume file: found after the same start-up work (a missing
    # path is refused before it, as a usage check)
    damaged = tmp_path / "damaged.ckpt"
    damaged.write_bytes(b"not a checkpoint")
    cases = [(("verify", missing), ("verify", "s3://nobucket/x.ckpt")),
             (("train", "--train-url", str(tmp_path / "run"), "--resume", str(damaged), "--epochs", "1"),
              ("train", "--train-url", "s3://nobucket/run", "--epochs", "1"))]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    for local, remote in cases:
        start = time.monotonic()
        run(*local, check=1)
        unloaded = time.monotonic() - start
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing listens
        start = time.monotonic()
        proc = run(*remote, check=1)
        took = time.monotonic() - start
        monkeypatch.delenv("AWS_ENDPOINT_URL")
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("torchresume: error: "), proc.stderr
        assert proc.stderr.endswith(" failed: cannot connect to http://127.0.0.1:9 (connection refused); check "
                                    "endpoint_url (or AWS_ENDPOINT_URL) and that the server is running\n")
        assert took < 3 * unloaded, (remote[0], took, unloaded)


def test_one_retry_loop_so_retry_lines_tell_the_truth() -> None:
    """botocore and s3fs retry nothing themselves: each 'retry i/N in X s' is one request, X s apart."""
    from torchresume.storage import remote
    config = remote.botocore_config(None)
    assert config["retries"] == {"total_max_attempts": 1} and config["connect_timeout"] == remote.CONNECT_TIMEOUT_S
    assert remote.botocore_config({"retries": {"mode": "standard"}})["retries"] == {"mode": "standard"}
    assert remote.filesystem("s3", {"endpoint_url": "http://127.0.0.1:9"}).retries == 1
