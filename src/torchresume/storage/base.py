"""The storage interface: where checkpoint bytes live, addressed by URL or path.

Writing is an explicit, two-step protocol: ``open_writer(path)`` returns a
Writer that takes the bytes in parts; ``commit()`` makes them visible under
``path`` all at once and durably, ``abort()`` leaves no trace. Until the commit
nothing is listed, read or counted by retention. ``write_atomic`` is the
one-call form of the same thing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import BinaryIO, Protocol, TypeVar

from torchresume.storage.pacing import Pace, PacedWriter

T = TypeVar("T")
Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True)
class FileInfo:
    """One stored entry: its full path/URL, size and modification time (epoch seconds).

    ``is_dir`` marks a directory (on object storage: a common key prefix).
    """

    path: str
    size: int
    mtime: float
    is_dir: bool = False

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]


class Writer(Protocol):
    """An uncommitted file: parts go in, then exactly one of commit() or abort()."""

    path: str

    def write(self, data: Buffer) -> None:
        """Append ``data``; may upload or write it out at once (bounded memory)."""

    def commit(self) -> None:
        """Make everything written visible under ``path``, durably; the writer is then done."""

    def abort(self) -> None:
        """Drop everything written; ``path`` keeps what it held before. Safe to call twice."""


class Storage(Protocol):
    """What the file layer, the manager and copy need from a place that stores files."""

    def open_writer(self, path: str, *, read_only: bool = True, size_hint: int | None = None) -> Writer:
        """A Writer for ``path``; ``size_hint`` (bytes) lets errors say how much space is needed."""

    def write_atomic(self, path: str, parts: Iterable[Buffer], *, read_only: bool = True) -> None:
        """Make ``path`` hold exactly ``parts``, all or nothing, durably."""

    def retrying(self, what: str, attempt: Callable[[], T]) -> T:
        """Run a whole, repeatable ``attempt`` (e.g. one complete write), again on transient errors."""

    def open_read(self, path: str) -> tuple[BinaryIO, int]:
        """An open binary file and its size; CheckpointNotFoundError if absent."""

    def open_header(self, path: str) -> tuple[BinaryIO, int]:
        """Like open_read, but cheap when only the first bytes will be read (ranged reads)."""

    def list(self, directory: str) -> list[FileInfo]:
        """Committed files and the directories directly in ``directory`` (temporaries excluded)."""

    def walk(self, directory: str) -> dict[str, int]:
        """Every committed file below ``directory``: relative path (with '/') -> size."""

    def stat(self, path: str) -> FileInfo | None:
        """The committed file or directory at ``path``, or None."""

    def digest(self, path: str) -> str | None:
        """The xxh3-64 hex digest of the committed file at ``path`` (None if absent)."""

    def delete(self, path: str) -> None:
        """Remove a file, or a directory and everything in it; absent is fine."""

    def exists(self, path: str) -> bool: ...

    def isdir(self, path: str) -> bool: ...

    def join(self, directory: str, name: str) -> str: ...


def write_all(storage: Storage, path: str, parts: Iterable[Buffer], *, read_only: bool = True,
              size_hint: int | None = None, pace: Pace | None = None) -> None:
    """Write ``parts`` through a Writer and commit; abort on any failure (the shared write_atomic).

    ``pace`` bounds the write's rate (storage/pacing.py): for background saves only.
    """
    writer = storage.open_writer(path, read_only=read_only, size_hint=size_hint)
    if pace is not None:
        writer = PacedWriter(writer, pace)
    try:
        for part in parts:
            writer.write(part)
    except BaseException:
        writer.abort()
        raise
    writer.commit()
