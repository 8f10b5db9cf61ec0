"""Staged checkpoints of a remote run go to the server and URL they were saved for, and never
replace newer remote ones (issue 20, item 11). Real servers on 127.0.0.1: moto and rclone."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
import torch

import torchresume as tr
from torchresume import storage
from torchresume.catalog import list_checkpoints
from torchresume.storage import staging_dir


@pytest.fixture(autouse=True)
def _own_endpoint_options() -> Iterator[None]:
    """These tests switch servers with configure(endpoint_url=...); the options are put back after."""
    saved = dict(storage._options)
    yield
    storage._options.clear()
    storage.configure(**saved)


def _stage_unuploaded(url: str, name: str, tmp_path, step: int) -> str:
    """A checkpoint saved into ``url``'s staging whose upload never happened (a kill came first)."""
    local = tmp_path / f"made-{step}"
    mgr = tr.CheckpointManager(str(local), model=torch.nn.Linear(2, 2), prefix=name.split("-")[0])
    path = mgr.save(1, step)
    assert path is not None
    os.makedirs(staging_dir(url), exist_ok=True)
    return shutil.copy(path, staging_dir(url))


def test_staging_is_keyed_by_endpoint_and_url(bucket, rclone_endpoint, s3_server, tmp_path, capsys) -> None:
    """A run staged against one server is not uploaded to (or resumed from on) another one with the
    same bucket name."""
    name = bucket.removeprefix("s3://")
    url = f"{bucket}/run1"
    storage.configure(endpoint_url=s3_server)
    moto_staging = staging_dir(url)
    _stage_unuploaded(url, "run-1_5.ckpt", tmp_path, 5)
    storage.configure(endpoint_url=rclone_endpoint)  # the same URL on another server, an empty bucket
    storage.resolve(url)[0].fs.mkdir(name)  # type: ignore[attr-defined]
    assert staging_dir(url) != moto_staging
    mgr = tr.CheckpointManager(url, model=torch.nn.Linear(2, 2), prefix="run")
    assert mgr.upload_pending() == []
    assert mgr.restore_latest() is None  # nothing of the other server's run
    mgr.close()
    assert list_checkpoints(url) == []
    storage.configure(endpoint_url=s3_server)  # back on the server it was saved for: uploaded, said once
    mgr = tr.CheckpointManager(url, model=torch.nn.Linear(2, 2), prefix="run")
    assert mgr.upload_pending() == [f"{url}/run-1_5.ckpt"]
    mgr.wait()
    mgr.close()
    out = capsys.readouterr().out
    assert out.count(f"torchresume: uploading {url}/run-1_5.ckpt, saved locally before the last run stopped "
                     f"(staged in {moto_staging})") == 1
    assert [e.name for e in list_checkpoints(url)] == ["run-1_5.ckpt"]


def test_a_staged_checkpoint_older_than_the_remote_newest_is_never_uploaded(bucket, tmp_path, capsys) -> None:
    url = f"{bucket}/run"
    stale = _stage_unuploaded(url, "run-1_3.ckpt", tmp_path, 3)  # saved first: older
    remote = tr.CheckpointManager(url, model=torch.nn.Linear(2, 2), prefix="run")
    remote.save(1, 9)
    remote.wait()
    os.remove(os.path.join(staging_dir(url), "run-1_9.ckpt"))  # another machine's run: not staged here
    remote.close()
    capsys.readouterr()
    again = tr.CheckpointManager(url, model=torch.nn.Linear(2, 2), prefix="run")
    assert again.upload_pending() == []
    again.upload_pending()
    info = again.restore_latest()
    again.close()
    assert info is not None and info["path"] == f"{url}/run-1_9.ckpt"
    assert [e.name for e in list_checkpoints(url)] == ["run-1_9.ckpt"]
    err = capsys.readouterr().err
    assert err.count(f"torchresume: not uploading run-1_3.ckpt, staged by an earlier process: {url}/run-1_9.ckpt, "
                     f"committed there, is newer (removed the staged copy from {staging_dir(url)})") == 1
    assert not os.path.exists(stale)  # it would only ever be stale: it leaves the staging cache (issue 34)


def test_an_encrypted_staged_checkpoint_is_uploaded_with_the_runs_key(bucket, tmp_path) -> None:
    """The staged file is checked with the run's key before its upload (without it, it never verified)."""
    url, key = f"{bucket}/enc", bytes(range(32))
    local = tmp_path / "made"
    made = tr.CheckpointManager(str(local), model=torch.nn.Linear(2, 2), prefix="run", enc_key=key)
    path = made.save(1, 4)
    assert path is not None
    os.makedirs(staging_dir(url), exist_ok=True)
    shutil.copy(path, staging_dir(url))
    mgr = tr.CheckpointManager(url, model=torch.nn.Linear(2, 2), prefix="run", enc_key=key)
    assert mgr.upload_pending() == [f"{url}/run-1_4.ckpt"]
    mgr.wait()
    mgr.close()
    assert [e.name for e in list_checkpoints(url, dec_key=key)] == ["run-1_4.ckpt"]


def test_another_prefix_or_a_best_copy_never_makes_a_staged_checkpoint_stale(bucket, tmp_path) -> None:
    """Only this run's own newer remote checkpoints make a staged one stale: a best copy uploaded
    first (its own thread) or another run's save must not drop the run's newest checkpoint."""
    url = f"{bucket}/mixed"
    _stage_unuploaded(url, "run-1_3.ckpt", tmp_path, 3)
    other = tr.CheckpointManager(url, model=torch.nn.Linear(2, 2), prefix="run-best")
    other.save(1, 9)
    other.wait()
    other.close()
    for name in os.listdir(staging_dir(url)):
        if name.startswith("run-best"):
            os.remove(os.path.join(staging_dir(url), name))  # committed remotely, not staged any more
    mgr = tr.CheckpointManager(url, model=torch.nn.Linear(2, 2), prefix="run")
    assert mgr.upload_pending() == [f"{url}/run-1_3.ckpt"]
    mgr.wait()
    mgr.close()


def test_one_server_spelt_two_ways_is_one_staging_directory(monkeypatch) -> None:
    url = "s3://bucket/run"
    monkeypatch.setattr(storage, "_options", {})
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    plain = staging_dir(url)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "HTTP://127.0.0.1:9000/")
    assert staging_dir(url) == plain
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9001")  # botocore's service-specific one wins
    assert staging_dir(url) != plain
