"""Which format a file is in, decided from its first bytes, never from its name."""

from __future__ import annotations

from enum import Enum

from torchresume.format import crypto, mindspore_crypto


class Kind(str, Enum):
    EMPTY = "empty"
    TINY = "tiny"
    ENCRYPTED = "encrypted"
    SAFETENSORS = "safetensors"  # native files are safetensors files too
    TORCH_ZIP = "torch-zip"
    TORCH_PICKLE = "torch-pickle"
    MINDSPORE = "mindspore"  # protobuf .ckpt, plain or encrypted (format/mindspore.py)
    UNKNOWN = "unknown"


HEAD_BYTES = 9


def _looks_like_mindspore(first: bytes) -> bool:
    from torchresume.format import mindspore  # the protobuf codec loads only when a file may need it
    return mindspore.looks_like(first)


def _is_safetensors(first: bytes, size: int) -> bool:
    """A u64 header length that fits the file, then the JSON header's opening brace."""
    return len(first) >= 9 and first[8:9] == b"{" and 8 + int.from_bytes(first[:8], "little") <= size


def detect(first: bytes, size: int) -> Kind:
    """Classify a file by its first ``HEAD_BYTES`` bytes and its size."""
    if size == 0:
        return Kind.EMPTY
    if first.startswith(crypto.MAGIC):
        return Kind.ENCRYPTED
    if mindspore_crypto.mode_of(first) or _looks_like_mindspore(first):
        return Kind.MINDSPORE
    if first.startswith(b"PK\x03\x04"):
        return Kind.TORCH_ZIP
    if _is_safetensors(first, size):  # before the pickle test: a header length of 0x280 starts 80 02
        return Kind.SAFETENSORS
    if len(first) >= 2 and first[0] == 0x80 and 2 <= first[1] <= 5:
        return Kind.TORCH_PICKLE
    if len(first) >= 9 and first[8:9] == b"{":  # u64 header length, then the JSON header
        return Kind.SAFETENSORS
    if size < HEAD_BYTES:
        return Kind.TINY
    return Kind.UNKNOWN
