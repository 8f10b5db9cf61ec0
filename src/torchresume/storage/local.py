"""Local disk: durable, atomic writes (temp file, fsync, rename, fsync dir).

A reader never sees half a file, and a crash at any instant leaves either the
old file or the new one under the final name. Temporaries are named
``.{name}.tmp-{pid}-{random}``; those left by dead processes are removed by
``clean_stale_temps`` and never listed. A failed write (no space, I/O error)
removes its temporary and says what happened and how much space was needed.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable, Iterable
from typing import BinaryIO, TypeVar

import xxhash

from torchresume.errors import CheckpointNotFoundError, CheckpointWriteError, StorageError, UnsafePathError
from torchresume.storage.base import Buffer, FileInfo, write_all
from torchresume.storage.direct import DIRECT_MIN_BYTES, DirectSink, open_direct

T = TypeVar("T")
_TEMP = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]+$")
_WRITE_CHUNK = 256 * 1024 * 1024
_READ_CHUNK = 16 * 1024 * 1024


def temp_name(path: str) -> str:
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def fsync_dir(directory: str) -> None:
    fd = os.open(directory or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def write_error(path: str, exc: OSError, written: int, size_hint: int | None) -> CheckpointWriteError:
    """One line naming the cause, what was needed and what is free; nothing was committed."""
    cause = os.strerror(exc.errno) if exc.errno else str(exc)
    text = f"{path}: cannot write the checkpoint: {cause}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        directory = os.path.dirname(os.path.abspath(path))
        try:
            free = _human(shutil.disk_usage(directory).free)
        except OSError:
            free = "unknown"
        need = _human(size_hint) if size_hint is not None else f"more than {_human(written)}"
        text += f"; it needs {need}, {free} free in {directory}; free space or save elsewhere"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        text += "; choose a writable directory"
    text += " (earlier checkpoints are intact)"
    err = CheckpointWriteError(text)
    err.errno = exc.errno
    return err


class LocalWriter:
    """A temporary file in the target's directory; commit = fsync, rename, fsync dir.

    A file announced (``size_hint``) as at least DIRECT_MIN_BYTES is written with
    O_DIRECT through storage/direct.py, which spares the CPU the page-cache copy.
    """

    def __init__(self, path: str, *, read_only: bool = True, size_hint: int | None = None) -> None:
        self.path = path
        self.read_only = read_only
        self.size_hint = size_hint
        self.written = 0
        self._directory = os.path.dirname(os.path.abspath(path))
        self._tmp = temp_name(path)
        self._fd: int | None = None
        self._sink: DirectSink | None = None
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        try:
            os.makedirs(self._directory, exist_ok=True)
            if (size_hint or 0) >= DIRECT_MIN_BYTES:
                self._fd, direct = open_direct(self._tmp, flags, 0o600)
                self._sink = DirectSink(self._fd) if direct else None
            else:
                self._fd = os.open(self._tmp, flags, 0o600)
        except OSError as exc:
            raise write_error(path, exc, 0, size_hint) from exc

    def write(self, data: Buffer) -> None:
        view = memoryview(data).cast("B")
        pos = 0
        try:
            if self._sink is not None:
                pos = self._sink.write(view)
            while pos < view.nbytes:
                pos += os.write(self._fd, view[pos:pos + _WRITE_CHUNK])  # type: ignore[arg-type]
        except OSError as exc:
            self.written += pos
            self.abort()
            raise write_error(self.path, exc, self.written, self.size_hint) from exc
        self.written += pos

    def commit(self) -> None:
        if self._fd is None:
            raise ValueError(f"{self.path}: writer already committed or aborted")
        try:
            if self._sink is not None:
                self._sink.finish(self.written)
                self._sink = None
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            if self.read_only:
                os.chmod(self._tmp, 0o400)
            os.replace(self._tmp, self.path)  # works over a read-only file: only the dir is written
        except OSError as exc:
            self.abort()
            raise write_error(self.path, exc, self.written, self.size_hint) from exc
        fsync_dir(self._directory)

    def abort(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass


def open_regular(path: str, label: str, *, follow: bool = True) -> tuple[BinaryIO, int]:
    """``path`` opened for reading and its size, if it is a regular file; ``label`` names it in errors.

    A FIFO, a device or a socket is refused before any read (opened non-blocking, so a FIFO
    does not wait for a writer). ``follow=False``: a symbolic link is refused too (a name inside a
    checkpoint, storage/confine.py).
    """
    extra = os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
    try:
        f = open(path, "rb", opener=lambda p, flags: os.open(p, flags | extra))
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"{label}: no such checkpoint file") from None
    except IsADirectoryError:
        raise CheckpointNotFoundError(f"{label}: is a directory, not a checkpoint file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow:
            raise UnsafePathError(f"{label}: a symbolic link; torchresume never follows a link inside a "
                                  "checkpoint: replace it with the file") from None
        if exc.errno == errno.ELOOP:
            raise CheckpointNotFoundError(f"{label}: a loop of symbolic links, which leads to no file; "
                                          "point at the checkpoint file itself") from None
        raise StorageError(f"{label}: cannot open it ({exc.strerror})") from None
    st = os.fstat(f.fileno())
    if not stat.S_ISREG(st.st_mode):
        f.close()
        raise UnsafePathError(f"{label}: not a regular file (a FIFO, a device or a socket); a checkpoint is "
                              "read from regular files only")
    os.set_blocking(f.fileno(), True)
    return f, st.st_size


class LocalStorage:
    """Storage on a local (POSIX) filesystem."""

    def open_writer(self, path: str, *, read_only: bool = True, size_hint: int | None = None) -> LocalWriter:
        return LocalWriter(path, read_only=read_only, size_hint=size_hint)

    def write_atomic(self, path: str, parts: Iterable[Buffer], *, read_only: bool = True) -> None:
        write_all(self, path, parts, read_only=read_only)

    def retrying(self, what: str, attempt: Callable[[], T]) -> T:
        """Local errors are not transient: one attempt."""
        return attempt()

    def open_read(self, path: str) -> tuple[BinaryIO, int]:
        return open_regular(path, path)

    def open_header(self, path: str) -> tuple[BinaryIO, int]:
        return self.open_read(path)

    def list(self, directory: str) -> list[FileInfo]:
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return []
        out = []
        for e in entries:
            # A symbolic link is never listed: what it leads to (another run's checkpoint, a file
            # outside) is not this directory's to resume from, count or delete. Nor is a FIFO or a device.
            if e.name.startswith(".") or e.is_symlink():
                continue
            st = e.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                out.append(FileInfo(e.path, 0, st.st_mtime, is_dir=True))
            elif stat.S_ISREG(st.st_mode):
                out.append(FileInfo(e.path, st.st_size, st.st_mtime))
        return out

    def walk(self, directory: str) -> dict[str, int]:
        """Every file below ``directory``; a link (to a file or a directory) is listed, not followed
        (its size is the link's own): reading it as a member is refused (storage/confine.py)."""
        if os.path.isfile(directory):
            return {"": os.path.getsize(directory)}
        out = {}
        for root, dirs, files in os.walk(directory):
            links = [d for d in dirs if os.path.islink(os.path.join(root, d))]
            for name in files + links:
                if _TEMP.match(name):
                    continue
                path = os.path.join(root, name)
                out[os.path.relpath(path, directory).replace(os.sep, "/")] = os.lstat(path).st_size
        return out

    def stat(self, path: str) -> FileInfo | None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        is_dir = os.path.isdir(path)
        return FileInfo(path, 0 if is_dir else st.st_size, st.st_mtime, is_dir=is_dir)

    def digest(self, path: str) -> str | None:
        """None when absent, and for a link or anything not a regular file: not a file of ours."""
        try:
            f, _ = open_regular(path, path, follow=False)
        except (CheckpointNotFoundError, UnsafePathError):
            return None
        h = xxhash.xxh3_64()
        with f:
            while chunk := f.read(_READ_CHUNK):
                h.update(chunk)
        return h.hexdigest()

    def delete(self, path: str) -> None:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
            return
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def isdir(self, path: str) -> bool:
        return os.path.isdir(path)

    def join(self, directory: str, name: str) -> str:
        return os.path.join(directory, name)


def clean_stale_temps(directory: str) -> list[str]:
    """Remove temporaries whose writing process is gone; returns what was removed."""
    removed: list[str] = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return removed
    for name in names:
        m = _TEMP.match(name)
        if m and not pid_alive(int(m.group(1))):
            path = os.path.join(directory, name)
            try:
                os.unlink(path)
                removed.append(path)
            except FileNotFoundError:
                pass
    return removed


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` on this machine still runs (this process counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
