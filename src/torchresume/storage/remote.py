"""Object storage (S3, OBS, MinIO, Ceph...) through fsspec, with commit markers and retries.

There is no rename on object storage, so a checkpoint is committed in two
steps: the object is uploaded whole, then a small marker ``.{name}.commit``
holding its size and xxh3-64 is written. Only objects with a matching marker
are listed (so resume, ls and retention never see a cut-off upload); deletion
removes the marker first. Transient errors (5xx, throttling, timeouts,
dropped connections) are retried with exponential backoff; anything else, or
the last failure, is raised as one StorageError line.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import time
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO, TypeVar

import xxhash

from torchresume.errors import CheckpointNotFoundError, StorageError
from torchresume.storage.base import Buffer, FileInfo

T = TypeVar("T")
MARKER_SUFFIX = ".commit"
RETRIES = 5
BACKOFF_S = 0.2
_PERMANENT_CODES = ("AccessDenied", "NoSuchBucket", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                    "403", "401")


def marker_path(path: str) -> str:
    directory, name = posixpath.split(path)
    return posixpath.join(directory, f".{name}{MARKER_SUFFIX}")


def is_transient(exc: BaseException) -> bool:
    """5xx, throttling, timeouts and dropped connections are worth another try."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return False
    text = f"{type(exc).__name__} {exc}"
    if any(code in text for code in _PERMANENT_CODES):
        return False
    transient_words = ("500", "502", "503", "504", "SlowDown", "Throttl", "Timeout", "timed out",
                       "Connect", "connection", "Reset", "EndpointConnectionError", "ServiceUnavailable",
                       "InternalError", "BrokenPipe", "IncompleteRead")
    return isinstance(exc, (ConnectionError, TimeoutError)) or any(w in text for w in transient_words)


def with_retries(what: str, fn: Callable[[], T], retries: int = RETRIES) -> T:
    delay = BACKOFF_S
    first = time.monotonic()
    for attempt in range(1, retries + 1):
        try:
            return fn()
        except FileNotFoundError:
            raise
        except Exception as exc:
            if attempt == retries or not is_transient(exc):
                raise StorageError(f"{what} failed after {attempt} attempt(s): "
                                   f"{type(exc).__name__}: {str(exc)[:300]}") from exc
            _say_retrying(what, exc, attempt, retries, delay, time.monotonic() - first)
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def _say_retrying(what: str, exc: BaseException, attempt: int, retries: int, delay: float,
                  elapsed: float) -> None:
    """A retried failure is never silent: what failed, which retry, and how long it has failed."""
    import sys
    print(f"torchresume: {what}: {type(exc).__name__}: {str(exc)[:160]}; retry {attempt}/{retries - 1} "
          f"in {delay:.1f} s (failing for {elapsed:.0f} s)", file=sys.stderr, flush=True)


# S3-compatible stores (rclone, MinIO, Ceph, OBS...) differ from AWS on botocore's flexible
# checksums (a ranged GET validated against the whole object's CRC fails there). Our own
# xxh3 checksums protect every tensor and commit marker, so checksums are sent and checked
# only where the S3 API requires them. A caller's own config_kwargs win.
CHECKSUM_CONFIG = {"request_checksum_calculation": "when_required",
                   "response_checksum_validation": "when_required"}


def storage_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn botocore/s3fs/aiohttp failures of a lazy read into one StorageError line."""
    def wrapped(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except (OSError, ValueError, EOFError):
            raise
        except Exception as exc:
            raise StorageError(f"object storage read failed: {type(exc).__name__}: {str(exc)[:300]}") from exc
    return wrapped


class _MappedReader:
    """A remote file handle whose read/seek failures are StorageErrors, not library tracebacks."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self.read = storage_errors(handle.read)
        self.seek = storage_errors(handle.seek)
        self.tell = handle.tell
        self.close = handle.close

    def __enter__(self) -> _MappedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


def filesystem(protocol: str, options: dict[str, Any]) -> Any:
    """An fsspec filesystem for ``protocol``; a missing extra is one clear line."""
    try:
        import fsspec
    except ImportError:
        raise ImportError("object storage needs fsspec and s3fs: pip install 'torchresume[s3]'") from None
    opts = dict(options)
    if protocol in ("s3", "s3a", "obs"):
        try:
            import s3fs  # noqa: F401
        except ImportError:
            raise ImportError(f"{protocol}:// URLs need s3fs: pip install 'torchresume[s3]'") from None
        endpoint = opts.pop("endpoint_url", None) or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            opts.setdefault("client_kwargs", {})["endpoint_url"] = endpoint
        opts.setdefault("use_listings_cache", False)
        config = dict(opts.get("config_kwargs") or {})
        for key, value in CHECKSUM_CONFIG.items():
            config.setdefault(key, value)
        opts["config_kwargs"] = config
        protocol = "s3"
    opts.setdefault("skip_instance_cache", True)
    return fsspec.filesystem(protocol, **opts)


class RemoteStorage:
    """Storage on an fsspec filesystem addressed by ``protocol://bucket/key`` URLs."""

    def __init__(self, protocol: str, options: dict[str, Any] | None = None) -> None:
        self.protocol = protocol
        self.fs = filesystem(protocol, options or {})

    def _key(self, url: str) -> str:
        return url.split("://", 1)[1] if "://" in url else url

    def url(self, key: str) -> str:
        return f"{self.protocol}://{key}"

    def write_atomic(self, path: str, parts: Iterable[Buffer], *, read_only: bool = True) -> None:
        data = b"".join(bytes(p) if not isinstance(p, bytes) else p for p in parts)
        key = self._key(path)
        marker = json.dumps({"size": len(data), "xxh3": xxhash.xxh3_64_hexdigest(data)}).encode()
        with_retries(f"upload of {path}", lambda: self.fs.pipe_file(key, data))
        with_retries(f"commit of {path}", lambda: self.fs.pipe_file(self._key(marker_path(path)), marker))

    def upload_file(self, local: str, path: str) -> None:
        """Upload a local file durably written elsewhere, then commit it."""
        with open(local, "rb") as f:
            data = f.read()
        self.write_atomic(path, [data])

    def read_marker(self, path: str) -> dict[str, Any] | None:
        try:
            raw = with_retries(f"read of {marker_path(path)}",
                               lambda: self.fs.cat_file(self._key(marker_path(path))))
            doc = json.loads(raw)
            return doc if isinstance(doc, dict) else None
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None

    def open_read(self, path: str) -> tuple[BinaryIO, int]:
        key = self._key(path)
        try:
            data = with_retries(f"download of {path}", lambda: self.fs.cat_file(key))
        except FileNotFoundError:
            raise CheckpointNotFoundError(f"{path}: no such checkpoint object") from None
        return io.BytesIO(data), len(data)

    def open_header(self, path: str) -> tuple[BinaryIO, int]:
        """A lazily reading object handle: inspecting a header fetches a few KiB, not the object."""
        key = self._key(path)
        try:
            info = with_retries(f"stat of {path}", lambda: self.fs.info(key))
            handle = with_retries(f"open of {path}",
                                  lambda: self.fs.open(key, "rb", block_size=1 << 16, cache_type="readahead"))
        except FileNotFoundError:
            raise CheckpointNotFoundError(f"{path}: no such checkpoint object") from None
        return _MappedReader(handle), int(info["size"])  # type: ignore[return-value]

    def list(self, directory: str) -> list[FileInfo]:
        """Committed objects directly under ``directory``: those whose marker matches their size."""
        key = self._key(directory).rstrip("/")
        try:
            entries = with_retries(f"listing of {directory}", lambda: self.fs.ls(key, detail=True))
        except FileNotFoundError:
            return []
        objects = {e["name"]: e for e in entries if e.get("type") == "file"}
        out = []
        for name, e in objects.items():
            base = posixpath.basename(name)
            if base.startswith("."):
                continue
            marker_key = posixpath.join(posixpath.dirname(name), f".{base}{MARKER_SUFFIX}")
            if marker_key not in objects:
                continue  # upload not committed (cut off, or still in flight)
            marker = self.read_marker(self.url(name))
            if marker is None or marker.get("size") != e.get("size"):
                continue
            modified = e.get("LastModified") or e.get("mtime")
            mtime = modified.timestamp() if hasattr(modified, "timestamp") else float(modified or 0)
            out.append(FileInfo(self.url(name), int(e["size"]), mtime))
        return out

    def delete(self, path: str) -> None:
        for target in (marker_path(path), path):  # marker first: never a committed half-delete
            try:
                with_retries(f"delete of {target}", lambda t=target: self.fs.rm_file(self._key(t)))  # type: ignore[misc]
            except FileNotFoundError:
                pass

    def exists(self, path: str) -> bool:
        return bool(with_retries(f"stat of {path}", lambda: self.fs.exists(self._key(path))))

    def isdir(self, path: str) -> bool:
        return bool(with_retries(f"stat of {path}", lambda: self.fs.isdir(self._key(path))))

    def join(self, directory: str, name: str) -> str:
        return directory.rstrip("/") + "/" + name
