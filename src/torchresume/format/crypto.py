"""Encryption at rest: AES-GCM over the whole checkpoint, in authenticated 64 MiB frames.

Layout: ``b"TRCRYPT1"`` | u32 little-endian header length H | H bytes of JSON
{"mode", "chunk", "nonce", "plain_size"} | frames. Frame i is AES-GCM of the
i-th ``chunk`` bytes of the plaintext (ciphertext + 16-byte tag), nonce =
8-byte random prefix + u32 big-endian i, associated data = the JSON header +
i + a last-frame flag, so reordering, truncating or editing any byte fails.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Iterator
from typing import Any

from torchresume.errors import CorruptCheckpointError, DecryptionError

MAGIC = b"TRCRYPT1"
MODES = ("AES-GCM",)
CHUNK = 64 * 1024 * 1024
TAG = 16


def check_key(key: Any, mode: str, role: str) -> bytes:
    """Validate a key/mode pair up front, with a message that says how to fix it."""
    if mode not in MODES:
        raise ValueError(f"{role[:3]}_mode={mode!r} is not supported; use 'AES-GCM' "
                         "(AES-CBC is not offered: it does not detect tampering)")
    return check_key_bytes(key, role)


def check_key_bytes(key: Any, role: str) -> bytes:
    """An AES key: bytes of length 16, 24 or 32 (shared by the MindSpore modes)."""
    if isinstance(key, str):
        raise TypeError(f"{role} must be bytes of length 16, 24 or 32, got a str; "
                        "pass key.encode() or bytes.fromhex(...)")
    if not isinstance(key, (bytes, bytearray)) or len(key) not in (16, 24, 32):
        length = len(key) if isinstance(key, (bytes, bytearray)) else type(key).__name__
        raise ValueError(f"{role} must be bytes of length 16, 24 or 32, got {length}")
    return bytes(key)


def _aead(key: bytes) -> Any:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    return AESGCM(key)


def _aad(header: bytes, i: int, last: bool) -> bytes:
    return header + struct.pack(">I?", i, last)


def encrypt(plain: bytes | bytearray | memoryview, key: bytes) -> list[bytes]:
    """Encrypt ``plain``; returns the file's parts in order."""
    return list(encrypt_stream([plain], len(plain), key))


def encrypted_prefix(size: int, nonce: bytes = bytes(8)) -> bytes:
    """The magic, length and JSON header of an encrypted file of ``size`` plaintext bytes."""
    header = json.dumps({"mode": "AES-GCM", "chunk": CHUNK, "nonce": nonce.hex(),
                         "plain_size": size}).encode()
    return MAGIC + struct.pack("<I", len(header)) + header


def encrypt_stream(parts: Iterable[bytes | bytearray | memoryview], size: int,
                   key: bytes) -> Iterator[bytes]:
    """Encrypt ``size`` bytes arriving as ``parts`` frame by frame (memory: one frame)."""
    nonce = os.urandom(8)
    prefix = encrypted_prefix(size, nonce)
    header = prefix[12:]
    yield prefix
    aead = _aead(key)
    count = max(1, -(-size // CHUNK))
    frame = bytearray()
    index = 0
    seen = 0
    for part in parts:
        view = memoryview(part).cast("B")
        seen += view.nbytes
        pos = 0
        while pos < view.nbytes:
            take = min(CHUNK - len(frame), view.nbytes - pos)
            frame += view[pos:pos + take]
            pos += take
            if len(frame) == CHUNK and index < count - 1:
                yield aead.encrypt(nonce + struct.pack(">I", index), bytes(frame),
                                   _aad(header, index, False))
                frame.clear()
                index += 1
    if seen != size:
        raise ValueError(f"encrypt_stream: told {size} bytes, got {seen}")
    yield aead.encrypt(nonce + struct.pack(">I", index), bytes(frame), _aad(header, index, True))


def parse_header(data: bytes, where: str) -> dict[str, Any]:
    """The JSON header of an encrypted file (needs no key): for inspect and decrypt."""
    if len(data) < 12:
        raise CorruptCheckpointError(f"{where}: encrypted file is truncated")
    (n,) = struct.unpack("<I", data[8:12])
    try:
        meta = json.loads(data[12:12 + n])
        valid = (isinstance(meta, dict) and meta.get("mode") in MODES
                 and isinstance(meta.get("plain_size"), int) and isinstance(meta.get("chunk"), int)
                 and meta["chunk"] > 0 and meta["plain_size"] >= 0)
        if valid:  # the frames' nonces are these 8 bytes + a u32 frame index
            valid = len(bytes.fromhex(meta["nonce"])) == 8
    except Exception:
        valid = False
    if not valid:
        raise CorruptCheckpointError(f"{where}: encrypted file has a damaged header")
    meta["header_size"] = 12 + n
    return meta


def decrypt(data: bytes, key: bytes | None, where: str) -> bytes:
    """Decrypt a whole encrypted file; DecryptionError on a wrong key or tampering."""
    meta = parse_header(data, where)
    if key is None:
        raise DecryptionError(f"{where}: the checkpoint is encrypted ({meta['mode']}); "
                              "pass dec_key=<the key used to save it>")
    header = data[12:meta["header_size"]]
    chunk, size = meta["chunk"], meta["plain_size"]
    count = max(1, -(-size // chunk))
    expected = meta["header_size"] + size + count * TAG
    if len(data) != expected:
        raise CorruptCheckpointError(f"{where}: encrypted file is {len(data)} bytes, expected "
                                     f"{expected}; it is truncated or damaged")
    from cryptography.exceptions import InvalidTag
    aead = _aead(key)
    nonce = bytes.fromhex(meta["nonce"])
    out = bytearray()
    pos = meta["header_size"]
    for i in range(count):
        n = min(chunk, size - i * chunk) + TAG
        try:
            out += aead.decrypt(nonce + struct.pack(">I", i), data[pos:pos + n],
                                _aad(header, i, i == count - 1))
        except InvalidTag:
            raise DecryptionError(f"{where}: decryption failed: the key is wrong or the file "
                                  "was modified") from None
        pos += n
    return bytes(out)
