"""Training into s3:// against a real S3-protocol server: kill, lose the local disk, resume exactly."""

from __future__ import annotations

import filecmp
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

import torchresume as tr
from tests.storage.conftest import bucket, s3_server  # noqa: F401  (fixtures)
from torchresume.catalog import list_checkpoints

ROOT = Path(__file__).resolve().parents[2]
MNIST = ROOT / "src" / "torchresume" / "app" / "mnist_data"


def _env(staging: Path, cache: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path),
            "TORCHRESUME_STAGING": str(staging), "TORCHRESUME_CACHE": str(cache)}


def _cmd(train_url: str, data_url: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "torchresume", "train", "--deterministic", "--epochs", "2",
           "--steps-per-epoch", "15", "--save-steps", "3", "--train-url", train_url]
    return cmd + (["--data-url", data_url] if data_url else [])


def _tensors(url: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in tr.load_checkpoint(url).items()
            if isinstance(v, torch.Tensor) and not k.startswith("rng.")}


def _reference_run(tmp_path: Path, env: dict[str, str]) -> str:
    """An uninterrupted run of the same command into a local directory."""
    ref = str(tmp_path / "ref")
    subprocess.run(_cmd(ref), check=True, env=env, capture_output=True, timeout=600)
    return ref


def _assert_final_equal(run: str, ref: str) -> None:
    final, expected = _tensors(f"{run}/lenet-2_15.ckpt"), _tensors(f"{ref}/lenet-2_15.ckpt")
    assert set(final) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(final[name], tensor), name


def test_sigkill_delete_local_files_resume_from_remote(bucket, tmp_path) -> None:  # noqa: F811
    staging = tmp_path / "staging"
    env = _env(staging, tmp_path / "cache")
    ref = _reference_run(tmp_path, env)
    run = f"{bucket}/run"
    proc = subprocess.Popen(_cmd(run), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not [e for e in list_checkpoints(run, verify=False)
                                          if e.global_step and e.global_step >= 9]:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    shutil.rmtree(staging)  # the machine's local files are gone
    done = subprocess.run(_cmd(run), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "resumed from s3://" in done.stdout
    _assert_final_equal(run, ref)
    ls = subprocess.run([sys.executable, "-m", "torchresume", "ls", run], env=env, capture_output=True,
                        text=True, timeout=300)
    assert ls.returncode == 0 and "lenet-2_15.ckpt" in ls.stdout and "INVALID" not in ls.stdout


def test_copy_mnist_to_bucket_and_back(bucket, tmp_path) -> None:  # noqa: F811
    env = _env(tmp_path / "staging", tmp_path / "cache")
    up = subprocess.run([sys.executable, "-m", "torchresume", "copy", str(MNIST), f"{bucket}/MNIST"],
                        env=env, capture_output=True, text=True, timeout=600)
    assert up.returncode == 0, up.stderr
    assert "copied 5 files" in up.stdout
    print(up.stdout)  # the throughput to the local test server (pytest -s shows it)
    again = subprocess.run([sys.executable, "-m", "torchresume", "copy", str(MNIST), f"{bucket}/MNIST"],
                           env=env, capture_output=True, text=True, timeout=600)
    assert "copied 0 files" in again.stdout and "skipped 5 already present" in again.stdout
    back = tmp_path / "back"
    down = subprocess.run([sys.executable, "-m", "torchresume", "copy", f"{bucket}/MNIST", str(back)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert down.returncode == 0, down.stderr
    names = sorted(os.listdir(MNIST))
    assert sorted(os.listdir(back)) == names
    match, mismatch, errors = filecmp.cmpfiles(MNIST, back, names, shallow=False)
    assert (match, mismatch, errors) == (names, [], [])


def test_copy_names_failed_files(tmp_path) -> None:
    env = _env(tmp_path / "s", tmp_path / "c")
    proc = subprocess.run([sys.executable, "-m", "torchresume", "copy", str(tmp_path / "absent"),
                           str(tmp_path / "dst")], env=env, capture_output=True, text=True)
    assert proc.returncode == 1 and "absent: no such file or directory" in proc.stderr


def test_data_url_from_bucket_is_cached_once(bucket, tmp_path) -> None:  # noqa: F811
    from torchresume.app.mnist import create_dataset
    from torchresume.app.mnist_download import cache_dir
    from torchresume.transfer import copy
    copy(str(MNIST), f"{bucket}/mn", progress=False)
    ds = create_dataset(f"{bucket}/mn", training=False)  # TORCHRESUME_CACHE is the test's tmp dir
    assert len(ds) == 312
    cached = cache_dir(f"{bucket}/mn")
    assert cached.startswith(str(tmp_path))
    first = {n: os.path.getmtime(os.path.join(cached, n)) for n in os.listdir(cached)}
    create_dataset(f"{bucket}/mn", training=False)
    assert {n: os.path.getmtime(os.path.join(cached, n)) for n in os.listdir(cached)} == first


def test_staged_but_not_uploaded_checkpoint_is_resumed_and_uploaded(bucket, tmp_path) -> None:  # noqa: F811
    """A kill between a checkpoint's local write and its upload: the next run uploads it and goes on."""
    staging = tmp_path / "staging"
    env = _env(staging, tmp_path / "cache")
    ref = _reference_run(tmp_path, env)
    run = f"{bucket}/run"
    one_epoch = [*_cmd(run)]
    one_epoch[one_epoch.index("--epochs") + 1] = "1"
    subprocess.run(one_epoch, check=True, env=env, capture_output=True, timeout=600)
    newest = list_checkpoints(run, verify=False)[0]
    assert newest.name == "lenet-1_15.ckpt" and list(staging.rglob(newest.name))
    from torchresume.storage import resolve
    store, _ = resolve(run)
    store.delete(newest.path)  # the remote never got it; the local copy is all there is
    done = subprocess.run(_cmd(run), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"uploading {newest.path}, saved locally before the last run stopped" in done.stdout
    assert f"resumed from {newest.path}" in done.stdout
    _assert_final_equal(run, ref)


def test_sigterm_saves_uploads_and_exits_143(bucket, tmp_path) -> None:  # noqa: F811
    from torchresume.storage import staging_dir
    env = _env(tmp_path / "staging", tmp_path / "cache")
    run = f"{bucket}/run"
    cmd = _cmd(run)
    cmd[cmd.index("--save-steps") + 1] = "1000"  # no periodic save: only the signal's
    summary = Path(env["TORCHRESUME_STAGING"]) / Path(staging_dir(run)).name / "summary.jsonl"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and (not summary.exists() or len(summary.read_text().splitlines()) < 6):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "pending uploads finished in" in err
    entries = list_checkpoints(run, verify=True)
    assert len(entries) == 1 and entries[0].valid
    assert entries[0].global_step is not None and 6 <= entries[0].global_step < 30


def _kill_after_uploads(cmd: list[str], env: dict[str, str], uploads: int) -> None:
    """Run ``cmd`` and SIGKILL it right after its ``uploads``-th "uploading to" line."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    seen = 0
    for line in proc.stdout:
        seen += "; uploading to s3://" in line
        if seen == uploads:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=300)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before its {uploads}th upload"


def test_kills_and_reruns_leave_exactly_keep_max_on_the_remote(bucket, tmp_path) -> None:  # noqa: F811
    """Issue 34: reruns after SIGKILLs never bring back checkpoints retention pruned (a staged copy
    older than the run's newest committed one is dropped, never uploaded); the remote ends with
    exactly --keep-max, a rerun of the finished job uploads nothing, and no stale copy stays staged."""
    from torchresume.storage import staging_dir
    staging = tmp_path / "staging"
    env = _env(staging, tmp_path / "cache")
    run = f"{bucket}/r2"
    cmd = [sys.executable, "-m", "torchresume", "train", "--model", "mlp", "--epochs", "1", "--steps-per-epoch",
           "60", "--save-steps", "5", "--keep-max", "2", "--threads", "1", "--train-url", run]
    for _ in range(3):
        _kill_after_uploads(cmd, env, 2)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    names = [e.name for e in list_checkpoints(run, verify=False)]
    assert names == ["mlp-1_60.ckpt", "mlp-1_55.ckpt"]
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "training already finished" in again.stdout
    assert "uploading" not in again.stdout + again.stderr
    assert [e.name for e in list_checkpoints(run, verify=False)] == names
    staged = sorted(n for n in os.listdir(staging / Path(staging_dir(run)).name) if n.endswith(".ckpt"))
    assert staged == ["mlp-1_60.ckpt"]  # the newest uploaded one, kept as a local cache
