"""Parallel multipart upload of one S3 object: several parts in flight, memory bounded.

``ParallelUpload`` takes the object's bytes in order (``write``), cuts them into
parts of ``part`` bytes and uploads up to ``streams`` parts at once; a writer
that gets ahead waits for the oldest part, so memory stays under
``(streams + 1) * part`` whatever the object's size. Part buffers are reused
once their part landed (fresh memory is slow to touch in a VM), and are
``s3body.PartBuffer``s, which aiohttp sends without copying them. ``close`` uploads the last
part, waits for all of them and completes the upload, so the object appears
whole or not at all; an object smaller than one part is one PUT. ``discard``
aborts the upload. It has the interface of the fsspec file it replaces
(``write``, ``close``, ``discard``, ``closed``), so ``RemoteWriter`` keeps
hashing, committing the marker last and aborting exactly as before.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from torchresume.storage.s3body import PartBuffer, part_buffer

T = TypeVar("T")
Call = Callable[..., Any]  # s3fs's call_s3(method, **kwargs)
Retry = Callable[[str, Callable[[], T]], T]


class ParallelUpload:
    """One object being uploaded as a multipart upload with up to ``streams`` parts in flight."""

    def __init__(self, call: Call, retry: Retry[Any], key: str, *, part: int, streams: int) -> None:
        self._call, self._retry = call, retry
        self._bucket, _, self._key = key.partition("/")
        self._part, self._streams = part, streams
        self._buffer: PartBuffer | None = None  # the part being filled, ``_fill`` bytes of it so far
        self._fill = 0
        self._free: list[PartBuffer] = []  # buffers of parts already sent: reused, never fresh memory
        self._upload_id: str | None = None
        self._pool = ThreadPoolExecutor(streams, thread_name_prefix="torchresume-put")  # threads start lazily
        self._inflight: list[Future[tuple[dict[str, Any], PartBuffer]]] = []
        self._done: list[dict[str, Any]] = []
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        pos = 0
        while pos < view.nbytes:
            if self._buffer is None:
                self._buffer = self._free.pop() if self._free else part_buffer(self._part)
            take = min(self._part - self._fill, view.nbytes - pos)
            self._buffer[self._fill:self._fill + take] = view[pos:pos + take]
            pos += take
            self._fill += take
            if self._fill == self._part:
                self._send(self._buffer)
                self._buffer, self._fill = None, 0
        return view.nbytes

    def close(self) -> None:
        """Upload what is left, wait for every part and complete the upload (the object appears)."""
        if self.closed:
            return
        rest = part_buffer(memoryview(self._buffer)[:self._fill] if self._buffer is not None else 0)
        self._buffer, self._fill = None, 0
        if self._upload_id is None:
            self._retry(f"upload of s3://{self._bucket}/{self._key}",
                        lambda: self._call("put_object", Bucket=self._bucket, Key=self._key, Body=rest))
        else:
            if rest:
                self._send(rest)
            self._wait(0)
            parts = sorted(self._done, key=lambda p: p["PartNumber"])
            self._retry(f"completing the upload of s3://{self._bucket}/{self._key}",
                        lambda: self._call("complete_multipart_upload", Bucket=self._bucket, Key=self._key,
                                           UploadId=self._upload_id, MultipartUpload={"Parts": parts}))
        self._shutdown()
        self.closed = True

    def discard(self) -> None:
        """Abort: parts in flight are waited for, then the upload is aborted; no object appears."""
        for future in self._inflight:
            future.cancel()
        self._shutdown()
        if self._upload_id is not None:
            self._call("abort_multipart_upload", Bucket=self._bucket, Key=self._key, UploadId=self._upload_id)
            self._upload_id = None
        self.closed = True

    def _send(self, body: PartBuffer) -> None:
        if self._upload_id is None:
            made = self._retry(f"starting the upload of s3://{self._bucket}/{self._key}",
                               lambda: self._call("create_multipart_upload", Bucket=self._bucket, Key=self._key))
            self._upload_id = str(made["UploadId"])
        self._wait(self._streams - 1)  # a free slot first: memory stays bounded
        number = len(self._done) + len(self._inflight) + 1
        self._inflight.append(self._pool.submit(self._upload_part, number, body))

    def _upload_part(self, number: int, body: PartBuffer) -> tuple[dict[str, Any], PartBuffer]:
        got = self._retry(f"upload of part {number} of s3://{self._bucket}/{self._key}",
                          lambda: self._call("upload_part", Bucket=self._bucket, Key=self._key,
                                             UploadId=self._upload_id, PartNumber=number, Body=body))
        return {"PartNumber": number, "ETag": got["ETag"]}, body

    def _wait(self, keep: int) -> None:
        """Wait for the oldest parts until at most ``keep`` are in flight; a failed part raises here."""
        while len(self._inflight) > keep:
            record, body = self._inflight.pop(0).result()
            self._done.append(record)
            if len(body) == self._part:
                self._free.append(body)

    def _shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
