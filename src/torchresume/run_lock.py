"""One training run per checkpoint directory: a lock that names its holder.

Local directories (and the local staging directory of a remote one) hold
``.torchresume.lock`` under a POSIX record lock (``lockf``): the kernel drops
it when the holder dies, and forked children (data-loader workers) never share
it, so a lock of a killed run is taken over without any clean-up (the file
stays until the next run releases it; a finished run removes it). On object
storage, where nothing can be locked, the lock is an object holding the
holder's host, PID and a heartbeat refreshed at every save; it is taken over
when its process is gone (same host) or its heartbeat is older than
``STALE_S``. The file or object records who holds it, so the error can say.
The lock file is opened without following a link: a link (or a FIFO) in its place is an
UnsafePathError naming it, and nothing outside the directory is written.
Within one process the lock is re-entrant (a run's several managers share it).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import threading
import time
from typing import Any

from torchresume.errors import RunLockedError
from torchresume.storage import is_remote, resolve
from torchresume.storage.confine import open_no_follow
from torchresume.storage.local import pid_alive

LOCK_NAME = ".torchresume.lock"
STALE_S = 900.0
EXIT_CODE = 75  # EX_TEMPFAIL: another run holds the directory; try again when it is done

_held: dict[str, tuple[RunLock, int]] = {}
_guard = threading.Lock()


def _holder() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
            "heartbeat": time.time()}


def _describe(doc: dict[str, Any]) -> str:
    started = doc.get("started")
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return f"pid {doc.get('pid', '?')} on {doc.get('host', '?')}, since {since}"


def _pid_alive(pid: Any) -> bool:
    return isinstance(pid, int) and pid_alive(pid)


class RunLock:
    """The lock of one directory (path or URL). ``acquire`` raises RunLockedError when held elsewhere."""

    def __init__(self, directory: str, *, local_dir: str | None = None) -> None:
        self.directory = str(directory)
        self.local_dir = local_dir if local_dir is not None else (
            None if is_remote(self.directory) else self.directory)
        self._fd: int | None = None
        self._path = ""
        self._remote = is_remote(self.directory)

    # -- local: lockf ---------------------------------------------------------------------
    def _acquire_local(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, LOCK_NAME)
        while True:
            fd = open_no_follow(path, os.O_RDWR | os.O_CREAT, 0o644)  # a link there: refused, never written through
            try:
                # A POSIX record lock, not flock: it belongs to this process alone, so forked
                # children (DataLoader workers) do not keep holding it after a kill -9.
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                try:
                    doc = json.loads(os.pread(fd, 4096, 0) or b"{}")
                except (ValueError, OSError, RecursionError):
                    doc = {}
                os.close(fd)
                raise self._locked(doc) from None
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder released and removed the file meanwhile: lock the new one
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder()).encode(), 0)
        self._fd, self._path = fd, path

    # -- remote: an object with a heartbeat -----------------------------------------------
    def _remote_path(self) -> tuple[Any, str]:
        storage, where = resolve(self.directory)
        return storage, storage.join(where, LOCK_NAME)

    def _read_remote(self) -> dict[str, Any] | None:
        storage, path = self._remote_path()
        if storage.stat(path) is None:
            return None
        f, _ = storage.open_read(path)
        with f:
            try:
                doc = json.loads(f.read())
            except (ValueError, RecursionError):
                return None
        return doc if isinstance(doc, dict) else None

    def _acquire_remote(self) -> None:
        doc = self._read_remote()
        me = _holder()
        if doc is not None and not (doc.get("host") == me["host"] and doc.get("pid") == me["pid"]):
            same_host_dead = doc.get("host") == me["host"] and not _pid_alive(doc.get("pid"))
            beat = doc.get("heartbeat")
            stale = not isinstance(beat, (int, float)) or time.time() - beat > STALE_S
            if not (same_host_dead or stale):
                raise self._locked(doc)
        self.refresh(me)

    def refresh(self, doc: dict[str, Any] | None = None) -> None:
        """Renew a remote lock's heartbeat (a no-op for local directories)."""
        if not self._remote:
            return
        doc = doc or {**(self._read_remote() or _holder()), "heartbeat": time.time()}
        storage, path = self._remote_path()
        storage.write_atomic(path, [json.dumps(doc).encode()], read_only=False)

    def _locked(self, doc: dict[str, Any]) -> RunLockedError:
        return RunLockedError(f"{self.directory} is in use by another training run ({_describe(doc)}); "
                              "wait for it to finish, stop it, or train into another directory")

    # -- both -----------------------------------------------------------------------------
    def acquire(self) -> None:
        if self.local_dir is not None:
            self._acquire_local(self.local_dir)
        if self._remote:
            try:
                self._acquire_remote()
            except BaseException:
                self._release_local()
                raise

    def _release_local(self) -> None:
        if self._fd is not None:
            try:
                os.unlink(self._path)  # while still held, so no one can lock the old inode after us
            except FileNotFoundError:
                pass
            fcntl.lockf(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def release(self) -> None:
        self._release_local()
        if self._remote:
            doc = self._read_remote()
            if doc is not None and doc.get("host") == socket.gethostname() and doc.get("pid") == os.getpid():
                storage, path = self._remote_path()
                storage.delete(path)


def _key(directory: str) -> str:
    return str(directory) if is_remote(str(directory)) else os.path.realpath(directory)


def acquire(directory: str, *, local_dir: str | None = None) -> RunLock:
    """Take (or share, within this process) the lock of ``directory``."""
    key = _key(directory)
    with _guard:
        if key in _held:
            lock, count = _held[key]
            _held[key] = (lock, count + 1)
            return lock
        lock = RunLock(directory, local_dir=local_dir)
        lock.acquire()
        _held[key] = (lock, 1)
        return lock


def release(directory: str) -> None:
    """Drop one hold of ``directory``'s lock; the last one releases it."""
    key = _key(directory)
    with _guard:
        if key not in _held:
            return
        lock, count = _held[key]
        if count > 1:
            _held[key] = (lock, count - 1)
            return
        del _held[key]
    lock.release()


__all__ = ["EXIT_CODE", "LOCK_NAME", "RunLock", "acquire", "release"]
