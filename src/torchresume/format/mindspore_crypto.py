"""MindSpore's checkpoint encryption (AES-GCM and AES-CBC), read and written.

The plaintext (a complete unencrypted MindSpore checkpoint) is cut into blocks
of at most 64 MiB; each becomes one frame, all integers little-endian u32:

    AES-GCM: magic 0x7F3A5ED8 | 16-byte tag | L | 16 | 16-byte IV | C | C bytes ciphertext
    AES-CBC: magic 0x7F3A5ED9 |               L | 16 | 16-byte IV | C | C bytes ciphertext

where ``L = 4 + 16 + 4 + C`` (the rest of the frame). AES-GCM uses the first
12 bytes of the IV field as its nonce, with no associated data; AES-CBC pads
each block with PKCS#7. Keys are 16, 24 or 32 bytes. AES-CBC authenticates
nothing: a wrong key or a changed byte is noticed only when the padding or the
decrypted protobuf is wrong, and not always (a tampered middle block changes
tensor values silently); AES-GCM detects both.
"""

from __future__ import annotations

import os
import struct
from typing import Any, BinaryIO

from torchresume.errors import CorruptCheckpointError, DecryptionError
from torchresume.format import crypto

GCM_MAGIC = 0x7F3A5ED8
CBC_MAGIC = 0x7F3A5ED9
MAGICS = {struct.pack("<I", GCM_MAGIC): "AES-GCM", struct.pack("<I", CBC_MAGIC): "AES-CBC"}
MODES = ("AES-GCM", "AES-CBC")
BLOCK = 64 * 1024 * 1024
_U32 = struct.Struct("<I")


def mode_of(first: bytes) -> str | None:
    """'AES-GCM' / 'AES-CBC' when ``first`` starts a MindSpore encrypted file, else None."""
    return MAGICS.get(bytes(first[:4]))


def check_key(key: Any, mode: str, role: str = "enc_key") -> bytes:
    if mode not in MODES:
        raise ValueError(f"{role[:3]}_mode={mode!r} is not supported for MindSpore checkpoints; "
                         f"use one of {MODES} (SM4-CBC is not offered)")
    return crypto.check_key_bytes(key, role)


def _cipher(key: bytes, iv: bytes) -> Any:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    return Cipher(algorithms.AES(key), modes.CBC(iv))


def encrypt(plain: list[Any], key: bytes, mode: str) -> list[bytes]:
    """Encrypt the plaintext given as parts; returns the file's frames in order."""
    data = memoryview(b"".join(plain))
    frames: list[bytes] = []
    for start in range(0, max(len(data), 1), BLOCK):
        block = bytes(data[start:start + BLOCK])
        iv = os.urandom(16)
        if mode == "AES-GCM":
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
            sealed = AESGCM(key).encrypt(iv[:12], block, None)
            cipher, tag = sealed[:-16], sealed[-16:]
            head = _U32.pack(GCM_MAGIC) + tag
        else:
            pad = 16 - len(block) % 16
            enc = _cipher(key, iv).encryptor()
            cipher = enc.update(block + bytes([pad]) * pad) + enc.finalize()
            head = _U32.pack(CBC_MAGIC)
        frames.append(head + _U32.pack(24 + len(cipher)) + _U32.pack(16) + iv
                      + _U32.pack(len(cipher)) + cipher)
    return frames


def decrypt(f: BinaryIO, size: int, key: bytes | None, where: str) -> bytearray:
    """The plaintext of a MindSpore encrypted checkpoint, frame by frame."""
    mode = mode_of(f.read(4)) or "?"
    f.seek(0)
    if key is None:
        raise DecryptionError(f"{where}: the checkpoint is encrypted (MindSpore {mode}); pass "
                              "dec_key=<the key used to save it>")
    out = bytearray()
    pos = 0
    index = 0
    while pos < size:
        index += 1
        head = f.read(4)
        frame_mode = mode_of(head)
        if frame_mode is None or frame_mode != mode:
            raise CorruptCheckpointError(f"{where}: encrypted frame {index} at byte {pos} does not "
                                         "start with MindSpore's magic; the file is damaged")
        tag = f.read(16) if mode == "AES-GCM" else b""
        fixed = f.read(24)
        if len(fixed) < 24 or len(tag) != (16 if mode == "AES-GCM" else 0):
            raise CorruptCheckpointError(_cut(where, index))
        length, iv_len = _U32.unpack_from(fixed, 0)[0], _U32.unpack_from(fixed, 4)[0]
        iv, cipher_len = fixed[8:24], _U32.unpack(f.read(4) or b"\0\0\0\0")[0]
        if iv_len != 16 or length != 24 + cipher_len:
            raise CorruptCheckpointError(f"{where}: encrypted frame {index} at byte {pos} has "
                                         "inconsistent lengths; the file is damaged")
        cipher = f.read(cipher_len)
        if len(cipher) != cipher_len:
            raise CorruptCheckpointError(_cut(where, index))
        out += _open(mode, key, iv, cipher, tag, where)
        pos = f.tell()
    return out


def _cut(where: str, index: int) -> str:
    return (f"{where}: truncated: encrypted frame {index} is cut off; the write was interrupted "
            "(use an older checkpoint)")


def _open(mode: str, key: bytes, iv: bytes, cipher: bytes, tag: bytes, where: str) -> bytes:
    wrong = (f"{where}: decryption failed ({mode}): the key is wrong or the file was modified")
    if mode == "AES-GCM":
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        try:
            return AESGCM(key).decrypt(iv[:12], cipher + tag, None)
        except InvalidTag:
            raise DecryptionError(wrong) from None
    if len(cipher) % 16 or not cipher:
        raise DecryptionError(wrong)
    dec = _cipher(key, iv).decryptor()
    plain = dec.update(cipher) + dec.finalize()
    pad = plain[-1]
    if not 1 <= pad <= 16 or plain[-pad:] != bytes([pad]) * pad:
        raise DecryptionError(wrong + " (AES-CBC cannot tell which)")
    return plain[:-pad]
