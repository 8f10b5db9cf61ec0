"""Hostile run directories met through the installed ``torchresume`` command (issue 35, item 1).

A link where torchresume writes its lock or its summary, a link to another run's checkpoint in the
run directory, a link or an escaping object key under a copy's source: each is refused or passed
over with one line, and every sentinel file outside stays as it was.
"""

from __future__ import annotations

import os
import subprocess
import sys

import fsspec
import torch

import torchresume as tr
from tests.storage.conftest import bucket, s3_server  # noqa: F401 - the fixtures
from torchresume.files import directory
from torchresume.run_lock import LOCK_NAME

SENTINEL = b"KEEP: a file outside the run directory\n"
TORCHRESUME = os.path.join(os.path.dirname(sys.executable), "torchresume")


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TORCHRESUME, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _sentinel(path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(SENTINEL)
    return str(path)


def _one_error_line(proc: subprocess.CompletedProcess[str], text: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, proc.stderr
    assert lines[-1] == f"torchresume: error: {text}", proc.stderr
    assert "Traceback" not in proc.stderr


def _train(run) -> subprocess.CompletedProcess[str]:
    return _cli("train", "--model", "mlp", "--epochs", "1", "--steps-per-epoch", "2", "--train-url", str(run))


def test_train_refuses_a_linked_lock_and_summary(tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    outside = _sentinel(tmp_path / "outside" / "v")
    os.symlink(outside, run / LOCK_NAME)
    proc = _train(run)
    _one_error_line(proc, f"{run / LOCK_NAME}: a symbolic link (to {outside}); torchresume writes its own "
                          "files only, never through a link: remove it")
    assert open(outside, "rb").read() == SENTINEL

    os.unlink(run / LOCK_NAME)
    os.symlink(outside, run / "summary.jsonl")
    proc = _train(run)
    _one_error_line(proc, f"{run / 'summary.jsonl'}: a symbolic link (to {outside}); torchresume writes its "
                          "own files only, never through a link: remove it")
    assert open(outside, "rb").read() == SENTINEL

    os.unlink(run / "summary.jsonl")
    os.mkfifo(run / "summary.jsonl")  # no reader: refused at once, typed, before anything is written
    proc = _train(run)
    _one_error_line(proc, f"{run / 'summary.jsonl'}: is not a regular file (a directory, FIFO, socket or "
                          "device); torchresume writes its own files only, never into such an entry: remove it "
                          "and run again")
    assert os.listdir(run) == ["summary.jsonl"]  # no graph, no breakpoint checkpoint


def test_prune_leaves_a_linked_checkpoint_of_another_run(tmp_path) -> None:
    net = torch.nn.Linear(3, 2)
    other = tmp_path / "other"
    theirs = str(other / "mlp-1_3.ckpt")
    os.makedirs(theirs)
    part = directory.write_part(theirs, "rank0", "state", {"w": torch.ones(2)})
    directory.commit_directory(theirs, [part], info={"time": 9e9})  # "newest" by its record
    their_file = str(other / "mlp-1_4.ckpt")
    tr.save_checkpoint({"w": torch.ones(2)}, their_file)
    run = tmp_path / "run"
    mgr = tr.CheckpointManager(str(run), model=net, prefix="mlp", keep=None)
    mgr.save(1, 1, 1)
    mgr.save(1, 2, 2)
    mgr.close()
    os.symlink(theirs, run / "mlp-1_3.ckpt")
    os.symlink(their_file, run / "mlp-1_4.ckpt")
    proc = _cli("prune", str(run), "--keep", "1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"deleted {run / 'mlp-1_1.ckpt'}"]
    assert directory.is_committed(theirs) and os.path.exists(their_file)
    assert os.path.islink(run / "mlp-1_3.ckpt")  # skipped: not this run's checkpoint


def test_copy_does_not_follow_a_local_link(tmp_path) -> None:
    src = tmp_path / "run"
    src.mkdir()
    (src / "mlp-1_1.ckpt").write_bytes(b"mine")
    secret = _sentinel(tmp_path / "outside" / "passwd")
    os.symlink(secret, src / "mlp-1_9.ckpt")
    dst = tmp_path / "dst"
    proc = _cli("copy", str(src), str(dst))
    assert proc.returncode == 1
    assert proc.stdout.startswith("copied 1 files")
    assert proc.stderr.strip() == (f"torchresume: error: failed to copy mlp-1_9.ckpt: UnsafePathError: "
                                   f"{src}/mlp-1_9.ckpt: a symbolic link (to {secret}); torchresume never "
                                   "follows a link inside a checkpoint or run directory: replace it with the file")
    assert sorted(os.listdir(dst)) == ["mlp-1_1.ckpt"]


def test_copy_from_s3_refuses_a_key_that_escapes(tmp_path, bucket) -> None:  # noqa: F811
    fs = fsspec.filesystem("s3", client_kwargs={"endpoint_url": os.environ["AWS_ENDPOINT_URL"]})
    key = bucket.removeprefix("s3://")
    fs.pipe(f"{key}/run/mlp-1_1.ckpt", b"mine")
    fs.pipe(f"{key}/run/../../outside/X", b"planted")
    assert any(".." in k for k in fs.find(f"{key}/run"))  # the store holds the key as it is
    dst = tmp_path / "a" / "b" / "dst"
    dst.mkdir(parents=True)  # there: the key would resolve to tmp_path/a/outside/X
    proc = _cli("copy", f"{bucket}/run", str(dst))
    assert proc.returncode == 1
    assert "failed to copy ../../outside/X: UnsafePathError: " in proc.stderr
    assert "names the file '../../outside/X', which leads outside it" in proc.stderr
    assert os.listdir(dst) == ["mlp-1_1.ckpt"]
    assert not (tmp_path / "a" / "outside").exists() and not (tmp_path / "outside").exists()
