"""Parallel ranged downloads and parallel multipart uploads against both real S3 servers.

moto (AWS's behaviour) and ``rclone serve s3`` (an independent Go implementation) run on
127.0.0.1 (tests/storage/conftest.py). Part and range sizes are shrunk so a few MiB
exercise several parts; the servers' calls are recorded (not replaced) to see what was
in flight at once and in which order the upload was completed and committed.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch

from torchresume import storage
from torchresume.errors import CorruptCheckpointError
from torchresume.files import read_checkpoint, write_checkpoint
from torchresume.storage import remote
from torchresume.storage.base import write_all

MIB = 1 << 20


@pytest.fixture(params=["s3", "rclone"])
def server_bucket(request) -> str:
    """A fresh bucket on moto, then on rclone serve s3."""
    return request.getfixturevalue("bucket" if request.param == "s3" else "rclone_bucket")


@pytest.fixture
def small_parts(monkeypatch) -> None:
    monkeypatch.setattr(remote, "UPLOAD_PART_BYTES", 5 * MIB)  # S3's smallest part but the last
    monkeypatch.setattr(remote, "RANGE_BYTES", 1 * MIB)
    monkeypatch.setattr(remote, "STREAMS", 4)
    monkeypatch.setattr(remote, "UPLOAD_STREAMS", 3)


class Recorder:
    """Wraps a filesystem method: logs (event, name, time) and the most calls seen in flight at once."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, float]] = []
        self.now = 0
        self.peak = 0
        self._lock = threading.Lock()

    def wrap(self, fn: Callable[..., Any], name_of: Callable[..., str]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            name = name_of(*args, **kwargs)
            with self._lock:
                self.now += 1
                self.peak = max(self.peak, self.now)
                self.events.append(("start", name, time.monotonic()))
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self.now -= 1
                    self.events.append(("end", name, time.monotonic()))
        return wrapped

    def times(self, event: str, name: str) -> list[float]:
        return [t for e, n, t in self.events if e == event and n == name]


def _store(url: str) -> remote.RemoteStorage:
    found, _ = storage.resolve(url)
    assert isinstance(found, remote.RemoteStorage)
    return found


def test_ranged_parallel_download_equals_the_bytes(server_bucket, small_parts, monkeypatch) -> None:
    url = server_bucket + "/blob.bin"
    data = os.urandom(6 * MIB + 12345)
    store = _store(url)
    store.write_atomic(url, [data])
    rec = Recorder()
    monkeypatch.setattr(remote.s3body, "read_range", rec.wrap(remote.s3body.read_range, lambda *a, **k: "get"))
    f, size = store.open_read(url)
    with f:
        assert size == len(data)
        assert f.read(100) == data[:100]
        f.seek(3 * MIB + 7)
        assert f.read(2 * MIB) == data[3 * MIB + 7:5 * MIB + 7]
        f.seek(0)
        whole = bytearray(size)
        view = memoryview(whole)
        got = 0
        while got < size:
            got += f.readinto(view[got:])  # type: ignore[attr-defined]
    assert bytes(whole) == data
    assert rec.peak >= 2, "range GETs were never in flight together"
    assert len(rec.times("start", "get")) >= 7  # 7 ranges of 1 MiB, each fetched by its own GET


def test_checkpoint_round_trips_through_ranged_reads(server_bucket, small_parts) -> None:
    url = server_bucket + "/state-1_1.ckpt"
    state = {"w": torch.randn(3 * MIB // 4), "b": torch.arange(1000), "opt": {"m": torch.randn(257)}}
    write_checkpoint(url, "state", state)
    back = read_checkpoint(url).tree
    assert torch.equal(back["w"], state["w"]) and torch.equal(back["b"], state["b"])
    assert torch.equal(back["opt"]["m"], state["opt"]["m"])


def test_damaged_object_is_caught(server_bucket, small_parts) -> None:
    url = server_bucket + "/state-1_2.ckpt"
    write_checkpoint(url, "state", {"w": torch.randn(2 * MIB // 4), "b": torch.randn(100)})
    store = _store(url)
    blob = bytearray(store.fs.cat_file(store.key(url)))
    blob[len(blob) - 2 * MIB + 1000] ^= 0x40  # one bit inside "w", in the second 1 MiB range
    store.fs.pipe_file(store.key(url), bytes(blob))  # replaced behind the marker's back
    with pytest.raises(CorruptCheckpointError, match=r"state-1_2\.ckpt: checksum mismatch in tensor 'w'"):
        read_checkpoint(url)
    store.fs.pipe_file(store.key(url), bytes(blob[:-300]))
    with pytest.raises(CorruptCheckpointError, match=r"state-1_2\.ckpt: truncated"):
        read_checkpoint(url)


def test_upload_parts_in_parallel_and_marker_last(server_bucket, small_parts, monkeypatch) -> None:
    url = server_bucket + "/run/big-1_1.ckpt"
    store = _store(url)
    rec = Recorder()
    monkeypatch.setattr(store.fs, "call_s3", rec.wrap(store.fs.call_s3, lambda method, *a, **k: method))
    monkeypatch.setattr(store.fs, "pipe_file", rec.wrap(store.fs.pipe_file, lambda *a, **k: "marker"))
    data = os.urandom(4 * 5 * MIB + 4321)  # four full parts and a short last one
    store.write_atomic(url, [data[:7 * MIB], data[7 * MIB:]])

    parts_started = rec.times("start", "upload_part")
    assert len(parts_started) == 5
    assert rec.peak >= 2, "parts were never uploaded together"
    completed = rec.times("end", "complete_multipart_upload")
    assert len(completed) == 1
    assert max(rec.times("end", "upload_part")) <= rec.times("start", "complete_multipart_upload")[0]
    assert rec.times("start", "marker")[0] >= completed[0]  # the commit marker goes last
    assert store.fs.cat_file(store.key(url)) == data
    assert [e.name for e in store.list(server_bucket + "/run")] == ["big-1_1.ckpt"]


def test_failed_parallel_upload_leaves_nothing(server_bucket, small_parts) -> None:
    url = server_bucket + "/run/cut-1_1.ckpt"
    store = _store(url)

    def parts() -> Any:
        yield os.urandom(12 * MIB)  # two parts are on their way when the writer fails
        raise RuntimeError("the process producing the bytes died")

    with pytest.raises(RuntimeError, match="producing the bytes died"):
        write_all(store, url, parts())
    assert store.list(server_bucket + "/run") == []
    assert not store.fs.exists(store.key(url))
    assert store.fs.call_s3("list_multipart_uploads", Bucket=store.key(server_bucket)).get("Uploads", []) == []


def test_encrypted_checkpoint_reads_through_ranged_reads(server_bucket, small_parts) -> None:
    url = server_bucket + "/secret-1_1.ckpt"
    key = bytes(range(32))
    state = {"w": torch.randn(3 * MIB // 4 + 5), "n": torch.arange(7)}
    write_checkpoint(url, "state", state, enc_key=key)
    back = read_checkpoint(url, dec_key=key)
    assert back.encrypted and torch.equal(back.tree["w"], state["w"]) and torch.equal(back.tree["n"], state["n"])
