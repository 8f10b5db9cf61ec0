"""``torchresume`` entry point: builds the parser, runs a command, turns errors into one line.

Exit codes: 0 done, 1 failed (or invalid for ``verify``), 2 usage error,
75 another run holds the checkpoint directory, 128 + signal after a
signal-triggered save.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import Any

from torchresume import run_lock
from torchresume.cli import files, training
from torchresume.errors import RunLockedError, TorchResumeError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchresume",
        description="Checkpoints that survive interruptions: train, resume, inspect.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                        help="fsspec option for s3:// URLs, e.g. endpoint_url=https://obs.example.com")
    files.register(sub, [common])
    training.register(sub, [common])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
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
    except RunLockedError as exc:
        print(f"torchresume: error: {exc}", file=sys.stderr)
        return run_lock.EXIT_CODE
    except (TorchResumeError, OSError, ValueError, TypeError, ImportError) as exc:
        message = files.cli_words(str(exc).replace("\n", " | ") or type(exc).__name__)
        print(f"torchresume: error: {message}", file=sys.stderr)
        return 1
    except Exception as exc:
        if type(exc).__module__.split(".")[0] not in _STORAGE_LIBRARIES:
            raise
        print(f"torchresume: error: object storage: {type(exc).__name__}: {str(exc)[:300]}",
              file=sys.stderr)
        return 1


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


def _configure_storage(options: list[str]) -> None:
    if options:
        from torchresume.storage import configure
        configure(**parse_storage_options(options))


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
            raise ValueError(f"--storage-option must be KEY=VALUE (KEY may be dotted: "
                             f"config_kwargs.s3.payload_signing_enabled=true), got {item!r}")
        where = parsed
        for name in names[:-1]:
            inner = where.setdefault(name, {})
            if not isinstance(inner, dict):
                raise ValueError(f"--storage-option {item!r}: {name!r} was given a value already")
            where = inner
        if isinstance(where.get(names[-1]), dict):
            raise ValueError(f"--storage-option {item!r}: {key!r} already holds dotted settings")
        where[names[-1]] = _setting(value) if len(names) > 1 else value
    return parsed


def _setting(value: str) -> Any:
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    return int(value) if re.fullmatch(r"-?[0-9]+", value) else value


if __name__ == "__main__":
    raise SystemExit(main())
