"""Names inside a checkpoint, a run directory or a copy's destination: confined to it.

A manifest, a metadata file or an object key names files relative to the place torchresume owns (a
checkpoint directory, a run directory, a copy's destination). Such a name comes from a file that may
have been crafted, so ``member`` is the one check every reader calls before it opens one, and
``open_member`` the one way to open it: the name must be a relative path of plain components (not
absolute, no ``..`` or ``.``, no empty component, no backslash or NUL); on the local disk no component
may be a symbolic link and the file must be a regular one (never a FIFO or a device), opened without
following a link. Anything else is an ``UnsafePathError`` naming it, raised before any byte is read.

``open_no_follow`` opens a file torchresume writes in a run directory (its lock, ``summary.jsonl``)
the same way: a link there is refused, never written through, and so is a FIFO, a directory, a
socket or a device in its place (the kernel's ENXIO/EISDIR/ENODEV from the open, or an fstat after it).
"""

from __future__ import annotations

import errno
import os
import stat
from typing import BinaryIO

from torchresume.errors import UnsafePathError
from torchresume.storage.base import Storage
from torchresume.storage.local import LocalStorage, open_regular


def check_name(name: object, where: str, *, nested: bool = False) -> str:
    """``name`` if it is a plain relative name inside ``where``; else UnsafePathError naming it.

    ``nested``: '/'-separated sub-directories are allowed (a copy's relative paths); otherwise the
    name is one file name (what manifests hold).
    """
    if not isinstance(name, str) or not name:
        raise UnsafePathError(f"{where}: names the file {name!r}, which is not a file name; "
                              "the checkpoint is damaged or was crafted")
    parts = name.split("/")
    bad = ("\\" in name or "\0" in name or name.startswith("/") or (not nested and len(parts) > 1)
           or any(p in ("", ".", "..") for p in parts))
    if bad:
        kinds = "an absolute path or '..'" if nested else "an absolute path, '..' or a sub-directory"
        raise UnsafePathError(f"{where}: names the file {name!r}, which leads outside it ({kinds}); "
                              "refused, nothing outside is read or written")
    return name


def member(storage: Storage, where: str, name: object, label: str) -> str:
    """The path of ``name`` inside ``where`` (``label`` names the checkpoint in errors), checked.

    Locally every component below ``where`` must exist as itself, not as a symbolic link (its
    kind is checked when it is opened). Costs one lstat per component.
    """
    checked = check_name(name, label, nested=True)
    path = where
    for part in checked.split("/"):
        path = storage.join(path, part)
        if isinstance(storage, LocalStorage):
            refuse_link(path, f"{label}/{checked}")
    return path


def refuse_link(path: str, label: str) -> None:
    """UnsafePathError if ``path`` is a symbolic link (absent is fine: the open then says so)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(f"{label}: a symbolic link (to {_target(path)}); torchresume never "
                              "follows a link inside a checkpoint or run directory: replace it with the file")


def open_member(storage: Storage, where: str, name: object, label: str, *,
                header_only: bool = False) -> tuple[BinaryIO, int]:
    """``name`` inside ``where`` opened for reading (a regular file, no link followed), and its size.

    ``header_only``: only its first bytes will be read (ranged reads on object storage).
    """
    path = member(storage, where, name, label)
    if isinstance(storage, LocalStorage):
        return open_regular(path, f"{label}/{name}", follow=False)
    return storage.open_header(path) if header_only else storage.open_read(path)


def open_no_follow(path: str, flags: int, mode: int = 0o644) -> int:
    """``os.open`` of a file torchresume writes in a run directory, refusing a link or a non-regular file.

    The descriptor is the file's own: nothing outside the directory is ever written through it.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePathError(f"{path}: a symbolic link (to {_target(path)}); torchresume writes "
                                  "its own files only, never through a link: remove it") from None
        if exc.errno in _NOT_REGULAR:
            # A FIFO without a reader (ENXIO), a directory (EISDIR), a device or socket: the kernel
            # refuses the open itself, before torchresume can fstat it.
            raise UnsafePathError(_not_regular(path)) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafePathError(_not_regular(path))
    os.set_blocking(fd, True)
    return fd


# errnos of an open refused because the entry is not a regular file.
_NOT_REGULAR = frozenset({errno.ENXIO, errno.EISDIR, errno.ENODEV, errno.EOPNOTSUPP})


def _not_regular(path: str) -> str:
    return (f"{path}: is not a regular file (a directory, FIFO, socket or device); torchresume writes "
            "its own files only, never into such an entry: remove it and run again")


def _target(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


__all__ = ["check_name", "member", "open_member", "open_no_follow", "refuse_link"]
