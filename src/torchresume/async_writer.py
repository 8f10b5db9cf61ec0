"""A background writer whose errors are never lost.

One worker thread runs submitted jobs in order. A job's exception is stored
and re-raised (as AsyncSaveError, with the original as its cause) on the next
``submit`` or on ``wait``/``close``; an atexit hook waits for pending work so
an interpreter exit does not drop a checkpoint.

Why a thread and not a writer process fed through shared memory, by measurement
(benchmarks/writer_gil.py): the write path releases the GIL where it spends its
time (xxh3 of a 256 MiB buffer, os.write of a memoryview, tensor copies: the main
thread's Python loop never stops longer than a scheduler slice, 15-50 ms, while
each call runs 0.15-0.9 s), so the interpreter is not what slows training down.
CPU is: on a machine with few, shared cores the writer's hashing and page-cache
copying take cores from the training step, and a process takes them just as a
thread does (steps 1.50-1.88x slower with either). What removed the slowdown
was priority: the worker thread lowers its own CPU priority (``nice``, +10 by
default; Linux applies it per thread), and steps during a background write ran
0.98x their time without one. The price: a niced writer yields to every other
process too, so on a machine loaded by others its writes take longer. A thread
also keeps errors, retention and the commit in this process with no pickling or
shared-memory lifetime to manage.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout

from torchresume.errors import AsyncSaveError


class AsyncWriter:
    """Runs write jobs one at a time in a background thread."""

    def __init__(self, name: str = "torchresume-writer", nice: int = 10) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name, initializer=_lower_priority,
                                        initargs=(nice,))
        self._pending: list[Future[object]] = []
        self._lock = threading.Lock()
        atexit.register(self._at_exit)
        _LIVE.add(self)

    def submit(self, job: Callable[[], object], what: str, on_wait: Callable[[], None] | None = None) -> None:
        """Queue ``job``; first re-raise any failure of an earlier job.

        ``on_wait`` is called once somebody waits for the job (``wait``, ``close``, exit):
        a paced write uses it to go at full speed from then on.
        """
        self.raise_if_failed()
        future = self._pool.submit(job)
        future.what = what  # type: ignore[attr-defined]
        future.on_wait = on_wait  # type: ignore[attr-defined]
        with self._lock:
            self._pending.append(future)

    def running(self) -> str | None:
        """What the job still queued or running is about (the oldest one), or None when idle."""
        with self._lock:
            busy = [f for f in self._pending if not f.done()]
        return str(getattr(busy[0], "what", "a checkpoint")) if busy else None

    def raise_if_failed(self) -> None:
        with self._lock:
            done = [f for f in self._pending if f.done()]
            self._pending = [f for f in self._pending if not f.done()]
        for f in done:
            _raise(f)

    def wait(self, timeout: float | None = None) -> None:
        """Block until every queued job ran; re-raise the first failure.

        With ``timeout`` (seconds, for all jobs together) a TimeoutError is raised
        if work is still running then; that work stays queued.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            pending = list(self._pending)
        self.hurry()
        for f in pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                f.exception(timeout=left)
            except FuturesTimeout:  # not the builtin TimeoutError before Python 3.11
                raise TimeoutError(f"background work still running after {timeout} s") from None
        with self._lock:
            self._pending = [f for f in self._pending if f not in pending]
        for f in pending:
            _raise(f)

    def hurry(self) -> None:
        """Tell every queued job that somebody waits for it now (its ``on_wait``)."""
        with self._lock:
            pending = list(self._pending)
        for f in pending:
            on_wait = getattr(f, "on_wait", None)
            if on_wait is not None:
                on_wait()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)
            atexit.unregister(self._at_exit)

    def _at_exit(self) -> None:
        try:
            self.wait()
        except AsyncSaveError as exc:
            from torchresume.log import log
            log.warning("%s", exc)


_LIVE: weakref.WeakSet[AsyncWriter] = weakref.WeakSet()


def _hurry_all() -> None:
    """At interpreter shutdown, before concurrent.futures joins its worker threads (which happens
    before any atexit hook, so ``_at_exit`` alone would wait out a paced write at its pace):
    threading runs these hooks last-registered first, and this one is registered after its."""
    for writer in list(_LIVE):
        writer.hurry()


if hasattr(threading, "_register_atexit"):  # CPython 3.9+; elsewhere an exit waits at the pace
    threading._register_atexit(_hurry_all)


def _lower_priority(nice: int) -> None:
    """Make the calling thread ``nice`` steps nicer, where the platform supports it (Linux: per thread)."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError as exc:  # not permitted or not supported: run at normal priority
        from torchresume.log import log
        log.debug("could not lower the writer thread's priority: %s", exc)


def _raise(f: Future[object]) -> None:
    exc = f.exception()
    if exc is not None:
        what = getattr(f, "what", "a checkpoint")
        raise AsyncSaveError(f"background save of {what} failed: {exc}") from exc
