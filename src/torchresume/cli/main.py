"""``torchresume`` entry point: builds the parser, runs a command, turns errors into one line.

Exit codes: 0 done, 1 failed (``verify``: invalid; ``diff``: the files differ), 2 usage error,
75 another run holds the checkpoint directory, 128 + signal after a
signal-triggered save.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from torchresume import run_lock
from torchresume.cli import files, options, training
from torchresume.errors import RunLockedError, TorchResumeError
from torchresume.log import log


def build_parser() -> argparse.ArgumentParser:
    parser = options.Parser(
        prog="torchresume",
        description="Checkpoints that survive interruptions: train, resume, inspect.",
        epilog="Exit codes: 0 done, 1 failed (verify: invalid; diff: the files differ), 2 usage "
               "error, 75 another run holds the directory, 128+N after a signal-triggered save.")
    parser.add_argument("--version", action="version", version=f"torchresume {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                        help="fsspec option for s3:// URLs, e.g. endpoint_url=https://obs.example.com "
                             "(repeatable)")
    files.register(sub, [common])
    training.register(sub, [common])
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("torchresume")
    except PackageNotFoundError:  # a source tree on sys.path, not installed
        return "unknown (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    if not _under_torchrun():
        return _run(argv)
    try:
        code = _run(argv)
    except SystemExit as exc:  # 128 + N after a signal-triggered save; argparse's exits
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    from torchresume.distributed.ending import end_process
    end_process(code)  # a rank's command is over: end it here (end_process says why)


class _FlagWords(logging.Filter):
    """The library's status lines in this command line's words (they name its Python arguments)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = files.cli_words(record.getMessage()), None
        return True


def _run(argv: Sequence[str] | None) -> int:
    if not any(isinstance(f, _FlagWords) for f in log.filters):
        log.addFilter(_FlagWords())
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _configure_storage(args.storage_option)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("torchresume: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _closed_pipe()
    except options.UsageError as exc:
        print(f"torchresume: error: {exc} (see: torchresume {args.command} --help)", file=sys.stderr)
        return options.USAGE_EXIT
    except RunLockedError as exc:
        print(f"torchresume: error: {exc}", file=sys.stderr)
        return run_lock.EXIT_CODE
    except (TorchResumeError, OSError, ValueError, TypeError, ImportError) as exc:
        lost = _lost_peer(exc)  # e.g. a sharded save that failed because a rank died
        if lost is not None:
            print(f"torchresume: error: {lost}", file=sys.stderr)
        elif not _said_by_rank_0(exc):
            text = _os_words(exc) if type(exc) in _OS_ERRORS else str(exc)
            message = files.cli_words(text.replace("\n", " | ") or type(exc).__name__)
            print(f"torchresume: error: {message}", file=sys.stderr)
        return 1
    except Exception as exc:
        lost = _lost_peer(exc)
        if lost is not None:
            print(f"torchresume: error: {lost}", file=sys.stderr)
            return 1
        if type(exc).__module__.split(".")[0] not in _STORAGE_LIBRARIES:
            raise
        print(f"torchresume: error: object storage: {type(exc).__name__}: {str(exc)[:300]}",
              file=sys.stderr)
        return 1


def _said_by_rank_0(exc: BaseException) -> bool:
    """Under torchrun, an error every rank meets alike (settings, data, the run's checkpoints) is
    printed by rank 0 alone, not once per rank."""
    from torchresume.errors import (
        AmbiguousRunError,
        CheckpointConfigError,
        DamagedRunError,
        DataError,
        DivergedRunError,
    )
    if not isinstance(exc, (CheckpointConfigError, DataError, AmbiguousRunError, DamagedRunError,
                            DivergedRunError)):
        return False
    return _under_torchrun() and os.environ.get("RANK", "0") != "0"


def _under_torchrun() -> bool:
    """Cheaply (no torch.distributed import): whether torchrun started this process as one of several."""
    return os.environ.get("WORLD_SIZE", "1") not in ("", "1")


def _lost_peer(exc: BaseException) -> str | None:
    """Under torchrun, a collective that failed because another rank died: one line, not a traceback."""
    if not _under_torchrun():
        return None
    from torchresume.train.distributed import lost_peer_message
    return lost_peer_message(exc)


_OS_ERRORS = (OSError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
              PermissionError)
_OS_HINTS = {errno.ENOTDIR: "a part of this path is a file, not a directory",
             errno.EISDIR: "this is a directory; a file was expected",
             errno.ENOENT: "no such file or directory",
             errno.EACCES: "permission denied; check the path's owner and mode",
             errno.EROFS: "the file system is read-only",
             errno.ENOSPC: "no space left on the device"}


def _os_words(exc: BaseException) -> str:
    """An operating-system error as ``path: what is wrong`` (not ``[Errno 20] Not a directory: 'x'``)."""
    assert isinstance(exc, OSError)
    what = _OS_HINTS.get(exc.errno or 0, exc.strerror or str(exc))
    if exc.filename is None:
        return what if exc.errno else str(exc)
    return f"{exc.filename}: {what}"


# Errors of the object-storage stack are one line too, never a traceback.
_STORAGE_LIBRARIES = ("botocore", "aiobotocore", "s3fs", "aiohttp", "fsspec", "urllib3")


def _closed_pipe() -> int:
    """The reader went away (``| head``): stop quietly, as a SIGPIPE'd command does."""
    import os
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 128 + 13


def _configure_storage(items: list[str]) -> None:
    if items:
        from torchresume.storage import configure
        configure(**parse_storage_options(items))


def parse_storage_options(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as fsspec options; a dotted KEY nests (``config_kwargs.s3.x=true``).

    Top-level values stay strings (keys, secrets and URLs are strings even when they look like
    numbers); nested values, which are botocore settings, read ``true``/``false`` as booleans
    and whole numbers as ints.
    """
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        names = key.split(".")
        if not sep or not all(names):
            raise options.UsageError(f"--storage-option must be KEY=VALUE (KEY may be dotted: "
                             f"config_kwargs.s3.payload_signing_enabled=true), got {item!r}")
        where = parsed
        for name in names[:-1]:
            inner = where.setdefault(name, {})
            if not isinstance(inner, dict):
                raise options.UsageError(f"--storage-option {item!r}: {name!r} was given a value already")
            where = inner
        if isinstance(where.get(names[-1]), dict):
            raise options.UsageError(f"--storage-option {item!r}: {key!r} already holds dotted settings")
        where[names[-1]] = _setting(value) if len(names) > 1 else value
    return parsed


def _setting(value: str) -> Any:
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    return int(value) if re.fullmatch(r"-?[0-9]+", value) else value


if __name__ == "__main__":
    raise SystemExit(main())
