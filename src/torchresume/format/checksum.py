"""The per-tensor checksum: xxh3-64, fast enough that verifying costs a few % of I/O (docs/benchmarks.md)."""

from __future__ import annotations

import xxhash

ALGORITHM = "xxh3_64"


def digest(data: memoryview | bytes) -> str:
    """Hex digest (16 chars) of ``data``."""
    return xxhash.xxh3_64_hexdigest(data)
