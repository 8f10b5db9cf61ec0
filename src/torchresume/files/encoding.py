"""What single.py and directory.py share: a state tree laid out as one native file's bytes,
written (encrypted or not) and committed, and how a file's header is described.

Both layouts stand on this module; it imports neither of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from torchresume.format import crypto, native
from torchresume.state.tree import flat_view, flatten, unflatten
from torchresume.storage import resolve
from torchresume.storage.base import Buffer, write_all
from torchresume.storage.pacing import Pace


def encode_state(kind: str, tree: Any, *, info: dict[str, Any] | None = None,
                 append: dict[str, Any] | None = None) -> native.Encoded:
    """Flatten ``tree`` and lay it out as a native checkpoint (tensors moved to CPU)."""
    tensors, skeleton = flatten(tree)
    prepared = {n: native.prepare(t, n) for n, t in tensors.items()}
    meta = {"kind": kind, "skeleton": skeleton, "info": info or {}, "append": append or {}}
    return native.encode(prepared, meta)


def encoded_parts(encoded: native.Encoded, enc_key: bytes | None) -> tuple[Iterable[Buffer], int]:
    """The bytes to store for ``encoded`` (encrypted frame by frame with ``enc_key``) and their size."""
    if enc_key is None:
        return encoded.parts(), encoded.size
    frames = -(-encoded.size // crypto.CHUNK) or 1
    size = len(crypto.encrypted_prefix(encoded.size)) + encoded.size + frames * crypto.TAG
    return crypto.encrypt_stream(encoded.parts(), encoded.size, enc_key), size


def write_encoded(encoded: native.Encoded, path: str, enc_key: bytes | None, *,
                  pace: Pace | None = None) -> int:
    """Stream ``encoded`` to ``path`` on its storage and commit; returns the bytes written.

    ``pace``: write at most that fast (a background save), else as fast as the storage takes it.
    """
    storage, where = resolve(path)

    def attempt() -> int:  # encoding is replayable, so a transient upload failure retries whole
        parts, size = encoded_parts(encoded, enc_key)
        write_all(storage, where, parts, size_hint=size, pace=pace)
        return size
    return storage.retrying(f"upload of {path}", attempt)


@dataclass
class Description:
    """What ``inspect`` reports about one checkpoint."""

    path: str
    size: int
    format: str
    kind: str = ""
    encrypted: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    append: dict[str, Any] = field(default_factory=dict)
    tensors: list[dict[str, Any]] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def tensor_rows(header: native.Header) -> list[dict[str, Any]]:
    return [{"name": e.name, "dtype": str(e.dtype).replace("torch.", ""),
             "shape": e.shape, "bytes": e.end - e.begin} for e in header.entries]


def scalars(skeleton: Any) -> dict[str, Any]:
    """Non-tensor leaves of a skeleton, under their dotted names (no tensor data needed)."""

    class _Placeholder(dict[str, torch.Tensor]):
        def __missing__(self, key: str) -> torch.Tensor:
            return torch.empty(0)

    try:
        tree = unflatten(skeleton, _Placeholder())
    except (ValueError, KeyError, TypeError):
        return {}
    return {k: v for k, v in flat_view(tree).items() if not isinstance(v, torch.Tensor)}
