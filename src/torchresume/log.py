"""The library's logging: one ``torchresume`` logger, quiet to configure, visible by default.

Library code never prints. Status lines (resumed from, saved, uploaded) are
INFO and go to stdout; problems (skipped files, signals, pending uploads) are
WARNING and go to stderr, each prefixed ``torchresume:``. Monitors that exist
to print (LossMonitor, TimeMonitor) log to ``torchresume.monitor`` without a
prefix, in MindSpore's format. As in Lightning, the logger gets a default
handler of its own and does not propagate; silence it with
``logging.getLogger("torchresume").setLevel(logging.WARNING)`` or replace its
handlers to route it elsewhere.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("torchresume")
monitor = logging.getLogger("torchresume.monitor")


class _ConsoleHandler(logging.Handler):
    """INFO to stdout, WARNING and above to stderr, looked up at each record (redirects work)."""

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        try:
            stream.write(self.format(record) + "\n")
            stream.flush()
        except (BrokenPipeError, ValueError):
            pass  # a closed pipe (`| head`) or a closed stream: nothing left to tell


def _install() -> None:
    if not log.handlers:
        handler = _ConsoleHandler()
        handler.setFormatter(logging.Formatter("torchresume: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    if not monitor.handlers:
        plain = _ConsoleHandler()
        plain.setFormatter(logging.Formatter("%(message)s"))
        monitor.addHandler(plain)
        monitor.propagate = False


_install()

__all__ = ["log", "monitor"]
