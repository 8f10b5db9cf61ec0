"""The library's logging: one ``torchresume`` logger, quiet to configure, visible by default.

Library code never prints. Status lines (resumed from, saved, uploaded) are
INFO and go to stdout; problems (skipped files, signals, pending uploads) are
WARNING and go to stderr, each prefixed ``torchresume:``. Monitors that exist
to print (LossMonitor, TimeMonitor) log to ``torchresume.monitor`` without a
prefix, in MindSpore's format; ``torchresume.progress`` (ProgressLog's lines)
goes to stderr at INFO so stdout stays clean for results. As in Lightning, the logger gets a default
handler of its own and does not propagate; silence it with
``logging.getLogger("torchresume").setLevel(logging.WARNING)`` or replace its
handlers to route it elsewhere.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TextIO

log = logging.getLogger("torchresume")
monitor = logging.getLogger("torchresume.monitor")
progress = logging.getLogger("torchresume.progress")


_through: Callable[[str, TextIO], None] | None = None


def write_through(writer: Callable[[str, TextIO], None] | None) -> None:
    """While a progress bar is drawn, console lines go through ``writer(line, stream)`` (its
    ``tqdm.write``), so they never land in the middle of the bar or leave stale copies of it."""
    global _through
    _through = writer


class _ConsoleHandler(logging.Handler):
    """INFO to stdout, WARNING and above to stderr, looked up at each record (redirects work)."""

    def __init__(self, *, always_stderr: bool = False) -> None:
        super().__init__()
        self.always_stderr = always_stderr

    def emit(self, record: logging.LogRecord) -> None:
        to_stderr = self.always_stderr or record.levelno >= logging.WARNING
        stream = sys.stderr if to_stderr else sys.stdout
        try:
            through = _through  # read once: the bar's thread may close it (and clear this) meanwhile
            if through is not None:  # a progress bar is on screen: it clears, prints, redraws
                through(self.format(record).lstrip("\n"), stream)
                return
            stream.write(self.format(record) + "\n")
            stream.flush()
        except (BrokenPipeError, ValueError):
            pass  # a closed pipe (`| head`) or a closed stream: nothing left to tell


class _Prefixed(logging.Formatter):
    """``torchresume: message``; a message's leading newlines (ending a progress bar's line) come first."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        body = text.lstrip("\n")
        return text[: len(text) - len(body)] + "torchresume: " + body


def _install() -> None:
    if not log.handlers:
        handler = _ConsoleHandler()
        handler.setFormatter(_Prefixed("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    if not progress.handlers:
        lines = _ConsoleHandler(always_stderr=True)
        lines.setFormatter(_Prefixed("%(message)s"))
        progress.addHandler(lines)
        progress.propagate = False
    if not monitor.handlers:
        plain = _ConsoleHandler()
        plain.setFormatter(logging.Formatter("%(message)s"))
        monitor.addHandler(plain)
        monitor.propagate = False


_install()

__all__ = ["log", "monitor", "progress", "write_through"]
