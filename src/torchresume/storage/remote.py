"""Object storage (S3, OBS, MinIO, Ceph...) through fsspec, with commit markers and retries.

There is no rename on object storage, so a checkpoint is committed in two
steps: the object is streamed up as a multipart upload (memory bounded by one
part, whatever the checkpoint's size) and completed, then a small marker
``.{name}.commit`` holding its size and xxh3-64 is written. Only objects with a matching marker
are listed (so resume, ls and retention never see a cut-off upload); deletion
removes the marker first. Transient errors (5xx, throttling, timeouts,
dropped connections) are retried with exponential backoff; anything else, or
the last failure, is raised as one StorageError line.
"""

from __future__ import annotations

import copy
import json
import os
import posixpath
import re
import time
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO, TypeVar

import xxhash

from torchresume.errors import CheckpointNotFoundError, CorruptCheckpointError, StorageError
from torchresume.log import log
from torchresume.storage import s3body
from torchresume.storage.base import Buffer, FileInfo, write_all
from torchresume.storage.json_text import loads
from torchresume.storage.multipart import ParallelUpload
from torchresume.storage.ranged import open_ranged

T = TypeVar("T")
MARKER_SUFFIX = ".commit"
# A commit marker is {"size", "xxh3"} and a few fields: some 100 bytes. Anything bigger was not
# written by torchresume, and is never read whole.
MAX_MARKER_BYTES = 64 * 1024
RETRIES = 5
PART_BYTES = 16 * 1024 * 1024  # multipart part size (S3 wants >= 5 MiB but the last)
RANGE_BYTES = 16 * 1024 * 1024  # one ranged GET of a download
STREAMS = 4  # ranges read at once: memory stays under (STREAMS + 1) ranges
UPLOAD_STREAMS = 3  # parts uploaded at once; each is one PartBuffer of ours, sent as slices of it (asyncio
# may still buffer what the socket did not take)
# Parallel upload part: larger only when 9,000 would not hold the object. 16 MiB, not 8: half the
# requests, 0.15 s less client CPU per GB (benchmarks/s3_throughput.py --compare), and peak memory
# as it was with 8 MiB parts when aiohttp still copied each one (benchmarks/stream_upload.py).
UPLOAD_PART_BYTES = 16 * 1024 * 1024
MAX_PARTS = 9000  # S3 allows 10,000 parts per upload
BACKOFF_S = 0.2
# Whole words: a bucket or object name such as "b-e4031d..." must not read as HTTP 403.
_PERMANENT_CODES = re.compile(r"\b(AccessDenied|NoSuchBucket|InvalidAccessKeyId|SignatureDoesNotMatch|403|401)\b")


def marker_path(path: str) -> str:
    directory, name = posixpath.split(path)
    return posixpath.join(directory, f".{name}{MARKER_SUFFIX}")


def is_transient(exc: BaseException) -> bool:
    """5xx, throttling, timeouts and dropped connections are worth another try."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return False
    # s3fs turns a ClientError into a bare OSError (503/SlowDown -> EBUSY, 500 -> EREMOTEIO) whose
    # text has lost the error code; the code survives in the ClientError it keeps as __cause__.
    cause = exc.__cause__
    text = f"{type(exc).__name__} {exc}" + (f" {type(cause).__name__} {cause}" if cause is not None else "")
    if _PERMANENT_CODES.search(text):
        return False
    transient_words = ("500", "502", "503", "504", "SlowDown", "Throttl", "Timeout", "timed out",
                       "Connect", "connection", "Reset", "EndpointConnectionError", "ServiceUnavailable",
                       "InternalError", "BrokenPipe", "IncompleteRead")
    return isinstance(exc, (ConnectionError, TimeoutError)) or any(w in text for w in transient_words)


_reached = False  # a request to object storage succeeded in this process


def no_connection(exc: BaseException) -> str | None:
    """The endpoint, when ``exc`` says no connection could be opened to it (refused, unreachable,
    unknown host, connect timeout); None for anything else (a connection dropped mid-request...)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if type(seen).__name__ in ("EndpointConnectionError", "ConnectTimeoutError"):
            from urllib.parse import urlsplit
            url = urlsplit(str(getattr(seen, "kwargs", {}).get("endpoint_url", "")))
            return f"{url.scheme}://{url.netloc}" if url.netloc else "the endpoint"
        seen = seen.__cause__ or seen.__context__
    return None


def with_retries(what: str, fn: Callable[[], T], retries: int = RETRIES) -> T:
    global _reached
    delay = BACKOFF_S
    first = time.monotonic()
    for attempt in range(1, retries + 1):
        try:
            result = fn()
            _reached = True
            return result
        except (FileNotFoundError, StorageError):
            raise  # a StorageError was retried already, by an inner step (e.g. the commit marker)
        except Exception as exc:
            endpoint = None if _reached else no_connection(exc)
            if endpoint is not None:  # never reached: a wrong endpoint or a server not started
                raise StorageError(f"{what} failed: cannot connect to {endpoint} ({_cause(exc)}); check "
                                   "endpoint_url (or AWS_ENDPOINT_URL) and that the server is running") from exc
            if attempt == retries or not is_transient(exc):
                raise StorageError(f"{what} failed after {attempt} attempt(s): "
                                   f"{type(exc).__name__}: {str(exc)[:300]}") from exc
            _say_retrying(what, exc, attempt, retries, delay, time.monotonic() - first)
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def _cause(exc: BaseException) -> str:
    """The innermost reason in an exception chain, e.g. ``connection refused``."""
    seen: BaseException | None = exc
    last = exc
    for _ in range(8):
        if seen is None:
            break
        last = seen
        seen = seen.__cause__ or seen.__context__
    if isinstance(last, ConnectionRefusedError):
        return "connection refused"
    if isinstance(last, (TimeoutError,)) or "timeout" in type(last).__name__.lower():
        return "connect timeout"
    return f"{type(last).__name__}: {str(last)[:120]}"


def _say_retrying(what: str, exc: BaseException, attempt: int, retries: int, delay: float,
                  elapsed: float) -> None:
    """A retried failure is never silent: what failed, which retry, and how long it has failed."""
    from torchresume.log import log
    log.warning("%s: %s: %s; retry %d/%d in %.1f s (failing for %.0f s)", what, type(exc).__name__,
                str(exc)[:160], attempt, retries - 1, delay, elapsed)


# S3-compatible stores (rclone, MinIO, Ceph, OBS...) differ from AWS on botocore's flexible
# checksums (a ranged GET validated against the whole object's CRC fails there). Our own
# xxh3 checksums protect every tensor and commit marker, so checksums are sent and checked
# only where the S3 API requires them. A caller's own config_kwargs win.
CHECKSUM_CONFIG = {"request_checksum_calculation": "when_required",
                   "response_checksum_validation": "when_required"}
# botocore SHA-256-hashes every uploaded byte to sign the payload over http, and also over https
# when no checksum header is sent (our case, above): ~1 s of CPU per GB, on the cores the
# training and a local S3 server share. The same xxh3 checksums make it redundant, so the
# payload goes UNSIGNED-PAYLOAD (headers and URL are still signed). Set per key into the
# caller's botocore ``s3`` options: theirs win.
S3_CONFIG = {"payload_signing_enabled": False}


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
        opts["config_kwargs"] = botocore_config(opts.get("config_kwargs"))
        protocol = "s3"
    opts.setdefault("skip_instance_cache", True)
    fs = fsspec.filesystem(protocol, **opts)
    if protocol == "s3":
        fs.retries = 1  # s3fs's own retry loop (a class setting): ours, with_retries, is the one
    return fs


# with_retries is the one retry loop: botocore's own (legacy: 5 attempts, with backoff) and s3fs's
# (5 more around each) made every attempt of ours wait ~8 s on a refused connection, ~40 s in all
# while the lines said "retry 1/4 in 0.2 s". A connection is given CONNECT_TIMEOUT_S to open.
CONNECT_TIMEOUT_S = 5
CLIENT_CONFIG = {"connect_timeout": CONNECT_TIMEOUT_S, "retries": {"total_max_attempts": 1}}


def botocore_config(given: dict[str, Any] | None) -> dict[str, Any]:
    """The caller's botocore Config kwargs over our defaults (CLIENT_CONFIG, CHECKSUM_CONFIG, S3_CONFIG)."""
    config = {**copy.deepcopy(CLIENT_CONFIG), **CHECKSUM_CONFIG, **(given or {})}  # botocore edits "retries"
    config["s3"] = {**S3_CONFIG, **(config.get("s3") or {})}
    return config


def _open_upload(fs: Any, key: str, size_hint: int | None) -> Any:
    """S3: a ParallelUpload (UPLOAD_STREAMS parts in flight); other fsspec stores: their own file."""
    call = getattr(fs, "call_s3", None)
    if call is None:
        return fs.open(key, "wb", block_size=PART_BYTES)
    part = max(UPLOAD_PART_BYTES, -(-(size_hint or 0) // MAX_PARTS))
    return ParallelUpload(call, with_retries, key, part=part, streams=UPLOAD_STREAMS)


class RemoteWriter:
    """A multipart upload fed part by part; commit completes it and writes the marker last.

    Errors propagate as the filesystem raised them, after the upload was aborted;
    ``RemoteStorage.retrying`` turns a whole write into retries and one StorageError line.
    """

    def __init__(self, storage: RemoteStorage, path: str, size_hint: int | None = None) -> None:
        self.path = path
        self._storage = storage
        self._key = storage.key(path)
        self._hash = xxhash.xxh3_64()
        self.written = 0
        self._file: Any = _open_upload(storage.fs, self._key, size_hint)

    def write(self, data: Buffer) -> None:
        view = memoryview(data).cast("B")
        try:
            for pos in range(0, view.nbytes, PART_BYTES):
                piece = view[pos:pos + PART_BYTES]
                self._hash.update(piece)
                self._file.write(piece)
        except BaseException:
            self.abort()
            raise
        self.written += view.nbytes

    def commit(self) -> None:
        try:
            self._file.close()  # completes the multipart upload (or one PUT when small)
        except BaseException:
            self.abort()
            raise
        marker = json.dumps({"size": self.written, "xxh3": self._hash.hexdigest()}).encode()
        fs, key = self._storage.fs, self._storage.key(marker_path(self.path))
        with_retries(f"commit of {self.path}", lambda: fs.pipe_file(key, marker))

    def abort(self) -> None:
        f, self._file = self._file, None
        if f is None or getattr(f, "closed", False):
            return
        try:
            f.discard()  # aborts the multipart upload: no object appears
        except Exception:
            pass
        f.closed = True  # a discarded file must not try to finish the upload when collected


class RemoteStorage:
    """Storage on an fsspec filesystem addressed by ``protocol://bucket/key`` URLs."""

    def __init__(self, protocol: str, options: dict[str, Any] | None = None) -> None:
        self.protocol = protocol
        self.fs = filesystem(protocol, options or {})

    def key(self, url: str) -> str:
        """The filesystem's key for ``url`` (the URL without its scheme)."""
        return url.split("://", 1)[1] if "://" in url else url

    def url(self, key: str) -> str:
        return f"{self.protocol}://{key}"

    def open_writer(self, path: str, *, read_only: bool = True,
                    size_hint: int | None = None) -> RemoteWriter:
        return RemoteWriter(self, path, size_hint)

    def write_atomic(self, path: str, parts: Iterable[Buffer], *, read_only: bool = True) -> None:
        data = [bytes(p) for p in parts]  # kept so that a transient failure can be retried whole
        self.retrying(f"upload of {path}", lambda: write_all(self, path, data, read_only=read_only))

    def retrying(self, what: str, attempt: Callable[[], T]) -> T:
        """Run a whole, repeatable operation, again on transient errors; StorageError at last."""
        return with_retries(what, attempt)

    def read_marker(self, path: str) -> dict[str, Any] | None:
        """The commit marker of ``path`` (a small JSON object), None when absent, too big or not one:
        the object then counts as uncommitted, passed over like any damaged entry, never read whole."""
        where = self.url(self.key(marker_path(path)))
        try:
            # A ranged read: a crafted marker of any size costs MAX_MARKER_BYTES + 1 at most.
            raw = with_retries(f"read of {marker_path(path)}", lambda: self.fs.cat_file(
                self.key(marker_path(path)), start=0, end=MAX_MARKER_BYTES + 1))
        except FileNotFoundError:
            return None
        if len(raw) > MAX_MARKER_BYTES:
            log.warning("%s: more than %d bytes, more than a commit marker holds; %s counts as uncommitted",
                        where, MAX_MARKER_BYTES, path)
            return None
        try:
            doc = loads(raw, where, "the commit marker")
        except CorruptCheckpointError as exc:
            log.warning("%s; %s counts as uncommitted", exc, path)
            return None
        return doc if isinstance(doc, dict) else None

    def open_read(self, path: str) -> tuple[BinaryIO, int]:
        """The object as a file read ahead by STREAMS parallel range GETs (storage/ranged.py),
        each streamed into a reused buffer (storage/s3body.py)."""
        key = self.key(path)
        try:
            info = with_retries(f"stat of {path}", lambda: self.fs.info(key))
        except FileNotFoundError:
            raise CheckpointNotFoundError(f"{path}: no such checkpoint object") from None
        if info.get("type") == "directory":
            raise CheckpointNotFoundError(f"{path}: is a directory, not a checkpoint object")
        size = int(info["size"])

        def fetch(begin: int, end: int, into: memoryview) -> int:
            return with_retries(f"download of bytes {begin}-{end} of {path}",
                                lambda: s3body.read_range(self.fs, key, begin, end, into))
        return open_ranged(fetch, size, path, part=RANGE_BYTES, streams=STREAMS), size

    def open_header(self, path: str) -> tuple[BinaryIO, int]:
        """A lazily reading object handle: inspecting a header fetches a few KiB, not the object."""
        key = self.key(path)
        try:
            info = with_retries(f"stat of {path}", lambda: self.fs.info(key))
            handle = with_retries(f"open of {path}",
                                  lambda: self.fs.open(key, "rb", block_size=1 << 16, cache_type="readahead"))
        except FileNotFoundError:
            raise CheckpointNotFoundError(f"{path}: no such checkpoint object") from None
        return _MappedReader(handle), int(info["size"])  # type: ignore[return-value]

    def list(self, directory: str) -> list[FileInfo]:
        """Committed objects (marker matches size) and sub-directories directly under ``directory``."""
        key = self.key(directory).rstrip("/")
        try:
            entries = with_retries(f"listing of {directory}", lambda: self.fs.ls(key, detail=True))
        except FileNotFoundError:
            return []
        objects = {e["name"]: e for e in entries if e.get("type") == "file"}
        out = [FileInfo(self.url(e["name"]), 0, 0.0, is_dir=True) for e in entries
               if e.get("type") == "directory" and not posixpath.basename(e["name"]).startswith(".")]
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
            out.append(FileInfo(self.url(name), int(e["size"]), _mtime(e)))
        return out

    def walk(self, directory: str) -> dict[str, int]:
        key = self.key(directory).rstrip("/")
        if with_retries(f"stat of {directory}", lambda: self.fs.isfile(key)):
            return {"": int(with_retries(f"stat of {directory}", lambda: self.fs.info(key))["size"])}
        found = with_retries(f"listing of {directory}", lambda: self.fs.find(key, detail=True))
        return {posixpath.relpath(name, key): int(info["size"]) for name, info in found.items()
                if not _is_marker(posixpath.basename(name))}

    def stat(self, path: str) -> FileInfo | None:
        key = self.key(path)
        try:
            e = with_retries(f"stat of {path}", lambda: self.fs.info(key))
        except FileNotFoundError:
            return None
        if e.get("type") == "directory":
            return FileInfo(path, 0, 0.0, is_dir=True)
        return FileInfo(path, int(e["size"]), _mtime(e))

    def digest(self, path: str) -> str | None:
        """The committed object's xxh3 from its marker (None when absent or uncommitted)."""
        found = self.stat(path)
        marker = self.read_marker(path) if found is not None and not found.is_dir else None
        if marker is None or found is None or marker.get("size") != found.size:
            return None
        return str(marker.get("xxh3"))

    def delete(self, path: str) -> None:
        found = self.stat(path)
        if found is not None and found.is_dir:
            keys = sorted(with_retries(f"listing of {path}", lambda: self.fs.find(self.key(path))),
                          key=lambda k: not _is_marker(posixpath.basename(k)))  # markers first
            for k in keys:
                self._remove(self.url(k))
            return
        for target in (marker_path(path), path):  # marker first: never a committed half-delete
            self._remove(target)

    def _remove(self, target: str) -> None:
        try:
            with_retries(f"delete of {target}", lambda: self.fs.rm_file(self.key(target)))
        except FileNotFoundError:
            pass

    def exists(self, path: str) -> bool:
        return bool(with_retries(f"stat of {path}", lambda: self.fs.exists(self.key(path))))

    def isdir(self, path: str) -> bool:
        return bool(with_retries(f"stat of {path}", lambda: self.fs.isdir(self.key(path))))

    def join(self, directory: str, name: str) -> str:
        return directory.rstrip("/") + "/" + name


def _is_marker(name: str) -> bool:
    return name.startswith(".") and name.endswith(MARKER_SUFFIX)


def _mtime(entry: dict[str, Any]) -> float:
    modified: Any = entry.get("LastModified") or entry.get("mtime")
    return float(modified.timestamp()) if hasattr(modified, "timestamp") else float(modified or 0)
