"""``torchresume`` entry point: builds the parser, runs a command, turns errors into one line.

Exit codes: 0 done, 1 failed (or invalid for ``verify``), 2 usage error,
128 + signal after a signal-triggered save.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from torchresume.cli import files
from torchresume.errors import TorchResumeError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchresume",
        description="Checkpoints that survive interruptions: train, resume, inspect.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    files.register(sub)
    try:
        from torchresume.cli import training  # type: ignore[attr-defined,unused-ignore]
    except ImportError:  # pragma: no cover - the harness is optional during bootstrapping
        pass
    else:
        training.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("torchresume: interrupted", file=sys.stderr)
        return 130
    except (TorchResumeError, OSError, ValueError, TypeError) as exc:
        message = str(exc).replace("\n", " | ") or type(exc).__name__
        print(f"torchresume: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
