"""A remote checkpoint directory written through local staging.

Each checkpoint is first written durably to a local staging directory (so a
kill, a network drop or a preemption never loses a completed save), then
streamed to the remote directory in the background and committed there. The
newest uploaded file stays as a local cache; older staged files are evicted
once their upload committed. Files staged but never uploaded (the process
died first) are found and uploaded by the next run.

This staging directory (``staging_dir``, ``TORCHRESUME_STAGING``) is files on local disk; the
host buffers an async save copies tensors into are staging.py's, another thing of the same name.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from torchresume.async_writer import AsyncWriter
from torchresume.log import log
from torchresume.storage import Storage, staging_dir
from torchresume.storage.base import write_all
from torchresume.storage.local import clean_stale_temps

CHUNK = 16 * 1024 * 1024


def upload_file(local: str, storage: Storage, path: str) -> None:
    """Stream a durably written local file to ``path`` on ``storage`` and commit it there."""
    size = os.path.getsize(local)

    def attempt() -> None:
        with open(local, "rb") as f:
            write_all(storage, path, iter(lambda: f.read(CHUNK), b""), size_hint=size)
    storage.retrying(f"upload of {path}", attempt)


class StagedRemote:
    """Local staging + background upload for the remote directory ``url`` on ``storage``."""

    def __init__(self, url: str, storage: Storage) -> None:
        self.url, self.storage = url, storage
        self.staging = staging_dir(url)
        clean_stale_temps(self.staging)
        self._uploader = AsyncWriter("torchresume-upload")
        self._last_uploaded: str | None = None
        self.verbose = False  # one line per upload

    def local_path(self, remote_path: str) -> str:
        """Where the staged copy of ``remote_path`` is written."""
        return os.path.join(self.staging, remote_path.rsplit("/", 1)[-1])

    def upload(self, local: str, remote: str, after: Callable[[], object] | None = None) -> None:
        """Queue the upload of ``local`` to ``remote``; ``after`` runs once it is committed."""
        def job() -> None:
            start = time.perf_counter()
            upload_file(local, self.storage, remote)
            if self.verbose:
                log.info("uploaded %s (%.1f MiB, %.2f s)", remote, os.path.getsize(local) / 2**20,
                         time.perf_counter() - start)
            if after is not None:
                after()
            # Only files already uploaded may go; the newest uploaded one stays as a local cache.
            if self._last_uploaded and self._last_uploaded != local and os.path.exists(self._last_uploaded):
                os.unlink(self._last_uploaded)
            self._last_uploaded = local
        self._uploader.submit(job, remote)

    def keep_as_cache(self, local: str) -> None:
        """``local`` (staged, already committed remotely) is the local cache until the next upload
        commits; then it goes, as this object's own uploads do."""
        if self._last_uploaded is None:
            self._last_uploaded = local

    def raise_if_failed(self) -> None:
        self._uploader.raise_if_failed()

    def wait(self, timeout: float | None = None) -> None:
        self._uploader.wait(timeout)

    def close(self) -> None:
        self._uploader.close()


__all__ = ["StagedRemote", "upload_file"]
