"""storage/s3body.py against real servers: parts sent as PartBuffers, ranges streamed into buffers.

moto and ``rclone serve s3`` run on 127.0.0.1 (tests/storage/conftest.py); faults come
from tests/storage/faulty_s3.py (moto behind a middleware), never from a mock.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.storage.faulty_s3 import FaultyS3
from torchresume import storage
from torchresume.errors import StorageError
from torchresume.storage import remote, s3body
from torchresume.storage.base import write_all

MIB = 1 << 20


@pytest.fixture(params=["s3", "rclone"])
def server_bucket(request) -> str:
    return str(request.getfixturevalue("bucket" if request.param == "s3" else "rclone_bucket"))


@pytest.fixture
def small_parts(monkeypatch) -> None:
    monkeypatch.setattr(remote, "UPLOAD_PART_BYTES", 5 * MIB)
    monkeypatch.setattr(remote, "RANGE_BYTES", 1 * MIB)
    monkeypatch.setattr(remote, "BACKOFF_S", 0.01)


@pytest.fixture
def faulty(s3_server, monkeypatch) -> Iterator[FaultyS3]:
    """s3:// URLs go to moto behind FaultyS3 while the test runs; botocore's own retries are off.
    The endpoint comes from the environment, so nothing of it outlives the test."""
    server = FaultyS3()
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_RETRY_MODE", "standard")
    storage.configure()  # drops filesystems made for the healthy server
    yield server
    server.stop()
    monkeypatch.undo()
    storage.configure()


def _store(url: str) -> remote.RemoteStorage:
    found, _ = storage.resolve(url)
    assert isinstance(found, remote.RemoteStorage)
    return found


def _record_sent(store: remote.RemoteStorage, bucket: str) -> list[tuple[str, Any, dict[str, Any]]]:
    """(operation, body, headers) of every request ``store`` sends from now on."""
    store.fs.exists(store.key(bucket))  # s3fs makes its botocore client on the first call
    sent: list[tuple[str, Any, dict[str, Any]]] = []

    def hook(request: Any, event_name: str, **_: Any) -> None:
        sent.append((event_name.rsplit(".", 1)[-1], request.body, dict(request.headers)))
    store.fs.s3.meta.events.register("before-send.s3", hook)
    return sent


def test_parts_go_as_part_buffers_without_expect(server_bucket, small_parts) -> None:
    url = server_bucket + "/big.bin"
    store = _store(url)
    sent = _record_sent(store, server_bucket)
    data = os.urandom(2 * 5 * MIB + 777)  # two full parts and a short last one
    store.write_atomic(url, [data])
    parts = [(body, headers) for op, body, headers in sent if op == "UploadPart"]
    assert len(parts) == 3
    assert all(isinstance(body, s3body.PartBuffer) for body, _ in parts)
    from aiohttp import payload
    assert type(payload.get_payload(s3body.PartBuffer(1))).__name__ == "PartPayload"  # aiohttp sends it as ours
    assert not any("Expect" in headers for _, headers in parts)  # no 100-continue round trip to wait for
    assert store.fs.cat_file(store.key(url)) == data


def test_small_object_is_one_put_of_a_part_buffer(server_bucket) -> None:
    url = server_bucket + "/small.bin"
    store = _store(url)
    sent = _record_sent(store, server_bucket)
    store.write_atomic(url, [b"tiny", memoryview(b" object")])
    puts = [body for op, body, _ in sent if op == "PutObject" and isinstance(body, s3body.PartBuffer)]
    assert len(puts) == 1
    assert store.fs.cat_file(store.key(url)) == b"tiny object"


def test_part_failed_once_is_sent_again_whole(bucket, small_parts, faulty) -> None:
    """The server refuses each part's first attempt (503 after reading its body): every part
    goes again from its first byte, and the object is intact."""
    seen: set[str] = set()

    def first_attempt(method: str, path: str, query: str) -> bool:
        if method != "PUT" or "partNumber=" not in query or query in seen:
            return False
        seen.add(query)
        return True

    faulty.fail_when = first_attempt
    url = bucket + "/retried.bin"
    store = _store(url)
    data = os.urandom(2 * 5 * MIB + 99)
    write_all(store, url, [data])
    statuses = [r[3] for r in faulty.parts()]
    assert statuses.count(503) == 3 and statuses.count(200) == 3, faulty.requests
    assert store.fs.cat_file(store.key(url)) == data


def test_range_cut_short_is_fetched_again(bucket, small_parts, faulty) -> None:
    """A GET whose body stops half way (the connection dropped) is retried for that range alone."""
    url = bucket + "/cut.bin"
    store = _store(url)
    data = os.urandom(3 * MIB + 5)
    store.write_atomic(url, [data])
    cut: list[str] = []

    def one_range_once(method: str, path: str, query: str) -> bool:
        if method != "GET" or not path.endswith("/cut.bin") or cut:
            return False
        cut.append(path)
        return True

    faulty.cut_when = one_range_once
    f, _ = store.open_read(url)
    with f:
        assert f.read() == data
    gets = [r for r in faulty.requests if r[0] == "GET" and r[1].endswith("/cut.bin")]
    assert [r[3] for r in gets].count(-1) == 1 and len(gets) == 5  # 4 ranges, one of them twice


def test_object_shorter_than_its_size_is_one_clear_error(server_bucket, small_parts) -> None:
    """The object is replaced by a shorter one after the reader learnt its size: the range
    that comes back short is reported, never padded or read past."""
    url = server_bucket + "/changing.bin"
    store = _store(url)
    store.write_atomic(url, [os.urandom(3 * MIB)])
    f, _ = store.open_read(url)
    store.fs.pipe_file(store.key(url), os.urandom(MIB + MIB // 2))
    with f, pytest.raises(StorageError, match=r"bytes \[1048576, 2097152\) returned 524288 bytes"):
        f.read()


def test_range_buffers_are_reused(server_bucket, small_parts, monkeypatch) -> None:
    """Ten ranges through a window of four: the ranges land in a few buffers, used again and again."""
    monkeypatch.setattr(remote, "STREAMS", 4)
    url = server_bucket + "/many.bin"
    store = _store(url)
    data = os.urandom(10 * MIB)
    store.write_atomic(url, [data])
    buffers: list[Any] = []  # the buffer objects themselves: ids of freed ones could repeat
    real = s3body.read_range

    def recording(fs: Any, key: str, begin: int, end: int, into: memoryview) -> int:
        buffers.append(into.obj)
        return real(fs, key, begin, end, into)

    monkeypatch.setattr(s3body, "read_range", recording)
    f, _ = store.open_read(url)
    with f:
        assert f.read() == data
    distinct: list[Any] = []
    for buffer in buffers:
        if not any(buffer is seen for seen in distinct):
            distinct.append(buffer)
    assert len(buffers) == 10 and len(distinct) <= 5, len(distinct)


def test_a_body_without_readinto_is_read_in_chunks() -> None:
    """Older aiobotocore bodies have only read(n): the same bytes land in the buffer."""
    import asyncio

    class ReadOnlyBody:
        def __init__(self, data: bytes) -> None:
            self.data, self.pos = data, 0

        async def read(self, n: int) -> bytes:
            chunk = self.data[self.pos:self.pos + min(n, 1000)]
            self.pos += len(chunk)
            return chunk

    data = os.urandom(4321)
    into = memoryview(bytearray(len(data)))
    asyncio.run(s3body._stream_into(ReadOnlyBody(data), into, "test"))
    assert bytes(into) == data
    with pytest.raises(ConnectionError, match="the connection closed after 4321 of 5000 bytes"):
        asyncio.run(s3body._stream_into(ReadOnlyBody(data), memoryview(bytearray(5000)), "test"))
