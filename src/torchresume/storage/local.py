"""Local disk: durable, atomic writes (temp file, fsync, rename, fsync dir).

A reader never sees half a file, and a crash at any instant leaves either the
old file or the new one under the final name. Temporaries are named
``.{name}.tmp-{pid}-{random}``; those left by dead processes are removed by
``clean_stale_temps`` and never listed.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterable
from typing import BinaryIO

from torchresume.errors import CheckpointNotFoundError
from torchresume.storage.base import Buffer, FileInfo

_TEMP = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]+$")
_WRITE_CHUNK = 256 * 1024 * 1024


def temp_name(path: str) -> str:
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def _write_all(fd: int, data: Buffer) -> None:
    view = memoryview(data).cast("B")
    pos = 0
    while pos < view.nbytes:
        pos += os.write(fd, view[pos:pos + _WRITE_CHUNK])


def fsync_dir(directory: str) -> None:
    fd = os.open(directory or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStorage:
    """Storage on a local (POSIX) filesystem."""

    def write_atomic(self, path: str, parts: Iterable[Buffer], *, read_only: bool = True) -> None:
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        tmp = temp_name(path)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            for part in parts:
                _write_all(fd, part)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        if read_only:
            os.chmod(tmp, 0o400)
        os.replace(tmp, path)  # rename works over a read-only file: only the dir is written
        fsync_dir(directory)

    def open_read(self, path: str) -> tuple[BinaryIO, int]:
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            raise CheckpointNotFoundError(f"{path}: no such checkpoint file") from None
        except IsADirectoryError:
            raise CheckpointNotFoundError(f"{path}: is a directory, not a checkpoint file") from None
        return f, os.fstat(f.fileno()).st_size

    def open_header(self, path: str) -> tuple[BinaryIO, int]:
        return self.open_read(path)

    def list(self, directory: str) -> list[FileInfo]:
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return []
        out = []
        for e in entries:
            if e.name.startswith(".") or not e.is_file():
                continue
            st = e.stat()
            out.append(FileInfo(e.path, st.st_size, st.st_mtime))
        return out

    def delete(self, path: str) -> None:
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
        if m and not _alive(int(m.group(1))):
            path = os.path.join(directory, name)
            try:
                os.unlink(path)
                removed.append(path)
            except FileNotFoundError:
                pass
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
