"""JSON read from a file or an object that may have been crafted: the one parser, every failure typed.

Lowest layer so that storage (commit markers), format (headers, metadata) and files (manifests) all
parse through it: a syntax or encoding error, nesting too deep for Python's parser (RecursionError),
an integer of more digits than Python converts or a lone UTF-16 surrogate is a
``CorruptCheckpointError`` naming the file and the part of it, never an untyped exception.
"""

from __future__ import annotations

import json
import re
from typing import Any

from torchresume.errors import CorruptCheckpointError

# A \uD800-\uDFFF escape: JSON lets a string hold half a UTF-16 pair, which no later print or
# UTF-8 write can encode. Only when one appears is the parsed document checked (rare: cost kept off).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def loads(raw: bytes | str, where: str, what: str) -> Any:
    """JSON from a file: any failure (syntax, encoding, nesting too deep, a number too long, a lone
    surrogate in a string) is typed."""
    try:
        doc = json.loads(raw)
        if _SURROGATE_ESCAPE.search(raw.encode() if isinstance(raw, str) else raw):
            json.dumps(doc, ensure_ascii=False).encode("utf-8")  # raises on a lone surrogate
        return doc
    except UnicodeEncodeError:
        raise CorruptCheckpointError(f"{where}: {what} holds a lone UTF-16 surrogate (\\ud800-\\udfff) in a "
                                     "string; the file is damaged or hostile") from None
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
