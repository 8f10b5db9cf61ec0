"""S3 request and response bodies moved without the copies aiohttp would make of them.

s3fs's client (aiobotocore on aiohttp) is kept, with its credentials, endpoint and
options; only how a part's bytes go out and a range's bytes come in changes.
Measured by benchmarks/s3_paths.py on 127.0.0.1 (rclone serve s3, client CPU seconds per GB):

* Upload (``PartBuffer``). botocore takes a part as bytes or bytearray, and aiohttp
  sends such a body by slicing it (a copy of the whole part, aiohttp >= 3.12), joining
  it to the headers (another, Python < 3.12.9) and buffering what the socket did not
  take (a third), into fresh memory each time. A ``PartBuffer`` is a bytearray botocore
  treats as any other, which aiohttp sends through ``PartPayload``: headers first, then
  1 MiB memoryview slices, each after the socket took the last. A file-like body would
  do the same but brings ``Expect: 100-continue``, which aiohttp waits for with no
  timeout (a store that never answers it would hang); this one does not.
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
            send_headers = getattr(writer, "send_headers", None)  # aiohttp < 3.12 sent them already
            if send_headers is not None:
                send_headers()
            for begin in range(0, end, UPLOAD_SLICE):
                await writer.write(view[begin:min(begin + UPLOAD_SLICE, end)])  # drains when buffered

    payload.PAYLOAD_REGISTRY.register(PartPayload, PartBuffer)

