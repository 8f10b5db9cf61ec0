"""S3 request and response bodies moved without the copies aiohttp would make of them.

s3fs's client (aiobotocore on aiohttp) is kept, with its credentials, endpoint and
options; only how a part's bytes go out and a range's bytes come in changes. Each path
is measured alone by benchmarks/s3_paths.py, the whole transfer by s3_throughput.py.

* Upload (``PartBuffer``). botocore takes a part as bytes or bytearray, and aiohttp
  sends such a body by slicing it (a copy of the whole part), joining it to the
  headers (another, on Python < 3.12.9) and buffering what the socket did not take
  (a third), into fresh memory each time. A ``PartBuffer`` is a bytearray botocore
  treats as any other, which aiohttp sends through ``PartPayload``: headers first, then
  1 MiB memoryview slices, each after the socket took the last. A file-like body would
  do the same but brings ``Expect: 100-continue``, which aiohttp waits for with no
  timeout (a store that never answers it would hang); this one does not.
* Download (``read_range``). s3fs's ``cat_file`` joins a GET's chunks into a new bytes
  object (fresh memory: page faults) that the reader then copies again; ``read_range``
  streams the body into a buffer of the caller's with aiobotocore's ``readinto``.
"""

from __future__ import annotations

import functools
from typing import Any

UPLOAD_SLICE = 1 << 20  # bytes handed to the socket at once: fewer is more loop overhead, more is buffered copies


class PartBuffer(bytearray):
    """One upload part's bytes; aiohttp sends it through PartPayload, without copying it."""


def part_buffer(size_or_data: int | memoryview) -> PartBuffer:
    """A new PartBuffer (zeroed, or a copy of ``data``), with aiohttp told how to send it."""
    _register_payload()
    return PartBuffer(size_or_data)


@functools.cache
def _register_payload() -> None:
    """Register PartPayload for PartBuffer bodies (aiohttp looks the exact type up first)."""
    try:
        from aiohttp import payload
    except ImportError:  # another HTTP stack: the part goes as the bytearray it is
        return

    class PartPayload(payload.BytesPayload):
        """A PartBuffer sent as memoryview slices: headers first (no join), then UPLOAD_SLICE at a time."""

        async def write(self, writer: Any) -> None:
            await self.write_with_length(writer, None)

        async def write_with_length(self, writer: Any, content_length: int | None) -> None:
            view = memoryview(self._value)
            end = view.nbytes if content_length is None else min(content_length, view.nbytes)
            send_headers = getattr(writer, "send_headers", None)  # else the first slice carries them
            if send_headers is not None:
                send_headers()
            for begin in range(0, end, UPLOAD_SLICE):
                await writer.write(view[begin:min(begin + UPLOAD_SLICE, end)])  # drains when buffered

    try:  # ahead of BytesPayload, which also takes a bytearray subclass, on every aiohttp version
        payload.PAYLOAD_REGISTRY.register(PartPayload, PartBuffer, order=payload.Order.try_first)
    except (AttributeError, TypeError):  # an aiohttp without orders
        payload.PAYLOAD_REGISTRY.register(PartPayload, PartBuffer)


def read_range(fs: Any, key: str, begin: int, end: int, into: memoryview) -> int:
    """Bytes ``[begin, end)`` of object ``key`` into ``into``; returns the length the server sent.

    S3 (s3fs): one ranged GetObject, its body read straight into ``into``. A length other
    than ``end - begin`` (the object changed, or the server ignored Range) is returned
    without reading the body, for the caller to report. Another fsspec store: ``cat_file``.
    A failure while the body streams in is a ConnectionError (worth another try).
    """
    if getattr(fs, "_call_s3", None) is None:
        data = fs.cat_file(key, start=begin, end=end)
        if len(data) == into.nbytes:
            into[:] = data
        return len(data)
    from fsspec.asyn import sync
    return int(sync(fs.loop, _get_into, fs, key, begin, end, into))


async def _get_into(fs: Any, path: str, begin: int, end: int, into: memoryview) -> int:
    from s3fs.core import version_id_kw
    bucket, key, version = fs.split_path(path)
    resp = await fs._call_s3("get_object", Bucket=bucket, Key=key, Range=f"bytes={begin}-{end - 1}",
                             **version_id_kw(version))
    body = resp["Body"]
    try:
        sent = int(resp.get("ContentLength", end - begin))
        if sent != into.nbytes:
            return sent
        await _stream_into(body, into, f"bytes {begin}-{end} of {path}")
        return sent
    finally:
        body.close()


async def _stream_into(body: Any, into: memoryview, what: str) -> None:
    """Fill ``into`` from a response body; a short body or a dropped connection is a ConnectionError."""
    got = 0
    readinto = getattr(body, "readinto", None)  # aiobotocore's StreamingBody; older ones only read()
    try:
        while got < into.nbytes:
            if readinto is not None:
                n = await readinto(into[got:])
            else:
                chunk = await body.read(into.nbytes - got)
                n = len(chunk)
                into[got:got + n] = chunk
            if not n:
                break
            got += n
    except Exception as exc:  # aiohttp/botocore stream errors: the GET as a whole is retried
        raise ConnectionError(f"reading {what} failed: {type(exc).__name__}: {exc}") from exc
    if got != into.nbytes:
        raise ConnectionError(f"reading {what}: the connection closed after {got} of {into.nbytes} bytes")
