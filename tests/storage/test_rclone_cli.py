"""The command line against a second S3 implementation (rclone serve s3), as a user runs it."""

from __future__ import annotations

import os
import re
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


def test_a_refused_connection_says_it_is_retrying(monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    proc = run("verify", "s3://nobucket/x.ckpt", check=1)
    retries = re.findall(r"^torchresume: (download|stat) of s3://nobucket/x.ckpt: EndpointConnectionError: .*; "
                         r"retry (\d)/4 in ([\d.]+) s \(failing for \d+ s\)$", proc.stderr + proc.stdout, re.M)
    assert [(r[1], r[2]) for r in retries] == [("1", "0.2"), ("2", "0.4"), ("3", "0.8"), ("4", "1.6")]
