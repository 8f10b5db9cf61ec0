"""JSON read from a file or an object that may have been crafted: the one parser, every failure typed.

Lowest layer so that storage (commit markers), format (headers, metadata) and files (manifests) all
parse through it: a syntax or encoding error, nesting too deep for Python's parser (RecursionError)
or an integer of more digits than Python converts is a ``CorruptCheckpointError`` naming the file
and the part of it, never an untyped exception.
"""

from __future__ import annotations

import json
from typing import Any

from torchresume.errors import CorruptCheckpointError


def loads(raw: bytes | str, where: str, what: str) -> Any:
    """JSON from a file: any failure (syntax, encoding, nesting too deep, a number too long) is typed."""
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptCheckpointError(f"{where}: {what} is not valid JSON ({exc}); "
                                     "the file is damaged or not a checkpoint") from None
    except RecursionError:
        raise CorruptCheckpointError(f"{where}: {what} nests JSON too deeply; the file is damaged or "
                                     "hostile") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise CorruptCheckpointError(f"{where}: {what} holds a value JSON cannot be read as ({exc}); "
                                     "the file is damaged or hostile") from None


__all__ = ["loads"]
