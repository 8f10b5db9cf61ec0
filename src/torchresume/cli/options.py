"""The command line's parser conventions: one-line usage errors (exit 2), defaults in help, typed values.

A value that cannot work is refused while parsing (exit 2, one line naming the option), never
after a run has started: ``--lr nan`` would train NaN steps, ``--keep 0`` would delete everything.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable
from typing import Any, NoReturn

USAGE_EXIT = 2


class UsageError(ValueError):
    """Options that cannot work together (or at all); the CLI exits 2 with one line."""


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in its help, unless the help says it (or there is none to show)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        nothing = action.default is None or action.default is False or action.default == [] or (
            action.default == argparse.SUPPRESS)
        if "default" in text or nothing or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """argparse with defaults shown in --help and usage errors as one line (exit 2)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"torchresume: error: {usage_words(message)} (see: {self.prog} --help)", file=sys.stderr)
        raise SystemExit(USAGE_EXIT)


def usage_words(message: str) -> str:
    """argparse's ``argument --a/--b: text`` as ``--a text``; its other messages unchanged."""
    m = re.match(r"argument (\S+?)(?:/\S+)?: (.*)$", message, re.S)
    if m:
        return f"{m.group(1)} {m.group(2)}"
    return message


def whole(least: int, most: int | None = None) -> Callable[[str], int]:
    """A whole number in [least, most]."""
    bound = f"at least {least}" if most is None else f"from {least} to {most}"

    def convert(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number {bound}, got {text.strip()}") from None
        if value < least or (most is not None and value > most):
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value
    convert.__name__ = "whole number"
    return convert


def number(*, above: float | None = None, least: float | None = None,
           below: float | None = None, what: str = "") -> Callable[[str], float]:
    """A finite float in the range given (``above``/``below`` exclusive, ``least`` inclusive)."""
    wanted = what or _range(above, least, below)

    def convert(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text.strip()}") from None
        bad = not math.isfinite(value) or (above is not None and value <= above) or (
            least is not None and value < least) or (below is not None and value >= below)
        if bad:
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text.strip()}")
        return value
    convert.__name__ = "number"
    return convert


def _range(above: float | None, least: float | None, below: float | None) -> str:
    words = ["a finite number"]
    if above is not None:
        words.append(f"above {above:g}")
    if least is not None:
        words.append(f"at least {least:g}")
    if below is not None:
        words.append(f"below {below:g}")
    return " ".join(words[:1]) + (" " + " and ".join(words[1:]) if len(words) > 1 else "")


def hex_key(text: str) -> bytes:
    """A key typed as hex digits (two per byte)."""
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            "must be the key as hex digits, two per byte (e.g. 16 bytes: 32 digits 0-9a-f), got "
            f"{text[:12]!r}{'...' if len(text) > 12 else ''}") from None


def url(text: str) -> str:
    """A local path or ``scheme://...`` URL; ``s3:/bucket`` (one slash) is a typo, not a folder."""
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):(/?)(?!/)", text)
    if m and len(m.group(1)) > 1 and (m.group(2) or m.group(1).lower() in ("s3", "s3a", "obs", "file")):
        fixed = f"{m.group(1)}://{text[m.end():]}"
        raise argparse.ArgumentTypeError(f"{text!r} looks like a URL with a missing slash: write {fixed!r} "
                                         f"(or ./{text} for a local folder of that name)")
    return text


url.__name__ = "path or URL"
hex_key.__name__ = "hex key"
