"""Stop signals turned into "save at the next step boundary, then exit 128 + signal".

One module for every place that listens: the Model harness, a custom loop's
``CheckpointManager.guard()`` and the OnRequestExit callback. A handler only
records the signal (nothing is written from inside a signal handler); the
loop checks ``received`` at its next step boundary. A second Ctrl-C aborts at
once. Handlers are installed only in the main thread and put back on exit.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any

STOP_SIGNALS: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
log = logging.getLogger("torchresume")


def exit_code(signum: int) -> int:
    """The conventional exit status after stopping for ``signum`` (143 for SIGTERM)."""
    return 128 + signum


def name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class StopSignals:
    """Records the first stop signal; ``with StopSignals() as stop: ... stop.received``."""

    def __init__(self, signals: Sequence[int] = STOP_SIGNALS, *, enabled: bool = True,
                 on_signal: Callable[[int], None] | None = None) -> None:
        self.signals = tuple(signals)
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.received: int | None = None
        self._on_signal = on_signal
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C aborts now
        self.received = signum
        if self._on_signal is not None:
            self._on_signal(signum)

    def install(self) -> StopSignals:
        if self.enabled and not self._previous:
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __enter__(self) -> StopSignals:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()


__all__ = ["STOP_SIGNALS", "StopSignals", "exit_code", "name"]
