"""Object-storage faults: cut-off uploads are never committed, transient errors are retried."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator

import pytest
import torch

import torchresume as tr
from tests.storage.faulty_s3 import FaultyS3
from torchresume import storage
from torchresume.catalog import list_checkpoints
from torchresume.errors import StorageError
from torchresume.storage import remote, resolve


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch) -> None:
    monkeypatch.setattr(remote, "BACKOFF_S", 0.01)


def test_object_without_commit_marker_is_not_listed(bucket, net) -> None:
    tr.save_checkpoint(net, f"{bucket}/run/lenet-1_5.ckpt")
    store, _ = resolve(bucket)
    fs = store.fs  # type: ignore[attr-defined]
    data = fs.cat_file(f"{bucket[5:]}/run/lenet-1_5.ckpt")
    fs.pipe_file(f"{bucket[5:]}/run/lenet-2_5.ckpt", data[: len(data) // 2])  # an upload cut off
    assert [e.name for e in list_checkpoints(f"{bucket}/run")] == ["lenet-1_5.ckpt"]


def test_transient_errors_are_retried(bucket, net, monkeypatch) -> None:
    store, _ = resolve(bucket)
    fs = store.fs  # type: ignore[attr-defined]
    real = fs.call_s3
    calls = {"n": 0}

    def flaky(method, *args, **kw):
        if method == "put_object":  # a small checkpoint is one PUT (storage/multipart.py)
            calls["n"] += 1
            if calls["n"] <= 2:
                raise OSError("503 Service Unavailable (SlowDown)")
        return real(method, *args, **kw)

    monkeypatch.setattr(fs, "call_s3", flaky)
    tr.save_checkpoint(net, f"{bucket}/r/a.ckpt")
    assert calls["n"] == 3  # two failed uploads, then the upload again
    assert torch.equal(tr.load_checkpoint(f"{bucket}/r/a.ckpt")["fc2.bias"], net.fc2.bias)


def test_permanent_error_is_one_clear_line(bucket, net, monkeypatch) -> None:
    store, _ = resolve(bucket)
    fs = store.fs  # type: ignore[attr-defined]

    def denied(method, *args, **kw):
        raise PermissionError("AccessDenied: Access Denied")

    monkeypatch.setattr(fs, "call_s3", denied)
    with pytest.raises(StorageError, match=r"upload of s3://.*/a.ckpt failed after 1 attempt\(s\): "
                                           r"PermissionError: AccessDenied"):
        tr.save_checkpoint(net, f"{bucket}/r/a.ckpt")


@pytest.fixture
def faulty(s3_server, monkeypatch) -> Iterator[FaultyS3]:
    """URLs resolve to the faulty endpoint while the test runs; botocore's own retries are off,
    so every attempt the server sees is one of torchresume's. The endpoint is set in the
    environment, not with configure(endpoint_url=...), which would outlive the test and send
    later tests' rclone URLs to moto."""
    server = FaultyS3()
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)  # undo restores it, whatever _through set
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_RETRY_MODE", "standard")
    yield server
    server.stop()
    monkeypatch.undo()
    storage.configure()  # later tests get the healthy server again


def _through(endpoint: str) -> None:
    os.environ["AWS_ENDPOINT_URL"] = endpoint  # monkeypatch's undo (above) restores it
    storage.configure()  # drops cached filesystems


# Several multipart parts (remote.PART_BYTES): large enough to be a multipart upload.
MULTIPART_BYTES = 101 << 20


def _big() -> dict[str, torch.Tensor]:
    return {"w": torch.full((MULTIPART_BYTES // 4,), 2.0)}


def _committed(url: str) -> list[str]:
    return [e.name for e in list_checkpoints(url, verify=False)]


def test_server_fails_after_first_part_nothing_new_is_committed(bucket, faulty, s3_server) -> None:
    """The server fails every request once the first part of a multipart upload has arrived:
    the failing part is retried a bounded number of times (parts are retried one by one inside
    one multipart upload, storage/multipart.py), the save raises and the old file stays listed."""
    url = f"{bucket}/run/model.ckpt"
    _through(s3_server)
    tr.save_checkpoint({"w": torch.ones(8)}, url)
    first_part_done = threading.Event()

    def after_first_part(method: str, path: str, query: str) -> bool:
        if first_part_done.is_set():
            return True
        if method == "PUT" and "partNumber=" in query:
            first_part_done.set()  # this one passes; everything after it fails
        return False

    faulty.fail_when = after_first_part
    _through(faulty.endpoint)
    with pytest.raises(StorageError, match=r"model.ckpt failed after (\d+) attempt") as err:
        tr.save_checkpoint(_big(), url)
    attempts = int(re.search(r"after (\d+) attempt", str(err.value)).group(1))
    assert 1 < attempts <= remote.RETRIES, str(err.value)  # retried, and bounded by count
    creates = [r for r in faulty.requests if r[0] == "POST" and r[2].startswith("uploads")]
    assert len(creates) == 1  # one multipart upload, its failing part retried; botocore retries off
    statuses = [r[3] for r in faulty.parts()]
    assert statuses.count(200) == 1 and 503 in statuses, faulty.requests  # one part landed, then failures
    assert not any(r[1].endswith(".commit") and r[0] == "PUT" and r[3] == 200 for r in faulty.requests)

    _through(s3_server)
    assert _committed(f"{bucket}/run") == ["model.ckpt"]
    assert torch.equal(tr.load_checkpoint(url)["w"], torch.ones(8))  # the old committed file


def test_marker_write_fails_after_multipart_upload_object_is_not_committed(bucket, faulty, s3_server) -> None:
    """A new version's object lands whole (multipart) but its commit marker never does: the
    old marker's size does not match, so the object must not be listed as committed."""
    url = f"{bucket}/run/model.ckpt"
    _through(s3_server)
    tr.save_checkpoint({"w": torch.ones(8)}, url)
    assert _committed(f"{bucket}/run") == ["model.ckpt"]

    faulty.fail_when = lambda method, path, query: method == "PUT" and path.endswith(".commit")
    _through(faulty.endpoint)
    with pytest.raises(StorageError, match=r"commit of .*model.ckpt failed after (\d+) attempt") as err:
        tr.save_checkpoint(_big(), url)
    attempts = int(re.search(r"after (\d+) attempt", str(err.value)).group(1))
    marker_puts = [r for r in faulty.requests if r[0] == "PUT" and r[1].endswith(".commit")]
    assert 1 < len(marker_puts) == attempts <= remote.RETRIES
    assert len(faulty.parts()) >= 2 and all(r[3] == 200 for r in faulty.parts())  # multipart, complete

    _through(s3_server)
    store, _ = storage.resolve(bucket)
    assert store.fs.size(url[5:]) > MULTIPART_BYTES  # type: ignore[attr-defined]  # the new object is there
    assert _committed(f"{bucket}/run") == []  # ...but its marker is the old one's


def test_missing_s3fs_extra_is_one_line(monkeypatch) -> None:
    import builtins
    real_import = builtins.__import__

    def no_s3fs(name, *args, **kwargs):
        if name == "s3fs":
            raise ImportError("No module named 's3fs'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_s3fs)
    with pytest.raises(ImportError, match=r"s3:// URLs need s3fs: pip install 'torchresume\[s3\]'"):
        remote.filesystem("s3", {})


def test_a_name_holding_403_is_no_permission_error() -> None:
    """A cut body of bucket "b-e4031d..." was once judged permanent (the name holds "403") and not
    retried: codes count as whole words only."""
    from torchresume.storage.remote import is_transient
    cut = ConnectionError("reading bytes 0-1048576 of b-e4031d197f5f/cut.bin failed: ClientPayloadError: "
                          "Response payload is not completed")
    assert is_transient(cut)
    assert not is_transient(OSError("An error occurred (403) when calling the GetObject operation: Forbidden"))
    assert not is_transient(OSError("AccessDenied: b-e4031d197f5f/x.bin"))
