"""The storage interface: where checkpoint bytes live, addressed by URL or path."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO, Protocol

Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True)
class FileInfo:
    """One stored file: its full path/URL, size and modification time (epoch seconds)."""

    path: str
    size: int
    mtime: float

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]


class Storage(Protocol):
    """What the manager and the API need from a place that stores files."""

    def write_atomic(self, path: str, parts: Iterable[Buffer], *, read_only: bool = True) -> None:
        """Make ``path`` hold exactly ``parts``, all or nothing, durably."""

    def open_read(self, path: str) -> tuple[BinaryIO, int]:
        """An open binary file and its size; CheckpointNotFoundError if absent."""

    def open_header(self, path: str) -> tuple[BinaryIO, int]:
        """Like open_read, but cheap when only the first bytes will be read (ranged reads)."""

    def list(self, directory: str) -> list[FileInfo]:
        """Committed files directly in ``directory`` (temporaries excluded)."""

    def delete(self, path: str) -> None:
        """Remove ``path``; absent is fine."""

    def exists(self, path: str) -> bool: ...

    def isdir(self, path: str) -> bool: ...

    def join(self, directory: str, name: str) -> str: ...
