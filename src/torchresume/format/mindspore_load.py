"""Open a MindSpore checkpoint file: decrypt it if needed (AES-GCM/CBC), then parse the protobuf.

Bytes only, like the rest of format/: the reader calls ``load`` for files the
detector classed as MindSpore.
"""

from __future__ import annotations

import io
from typing import Any, BinaryIO

from torchresume.format import mindspore, mindspore_crypto
from torchresume.log import log

FORMAT = "mindspore"

# The entry in which torchresume's training writes a run's metadata (its ``info``, as JSON) into the
# MindSpore files it saves: a string entry, the way MindSpore's append_dict stores one, so MindSpore
# still loads the file (load_param_into_net ignores names the network lacks). Automatic resume takes
# only MindSpore files that carry it: a plain MindSpore file dropped into a run is never the newest.
RUN_ENTRY = "torchresume_run"


def run_meta(entries: dict[str, Any], where: str) -> dict[str, Any]:
    """The checkpoint's meta (``{"info": ...}``) from its run entry, removed from ``entries``;
    ``{}`` for a plain MindSpore file. A run entry that is not a JSON object: CorruptCheckpointError."""
    raw = entries.pop(RUN_ENTRY, None)
    if raw is None:
        return {}
    from torchresume.format import native
    info = native.loads(raw, where, f"its {RUN_ENTRY!r} entry") if isinstance(raw, str) else None
    if not isinstance(info, dict):
        from torchresume.errors import CorruptCheckpointError
        raise CorruptCheckpointError(f"{where}: its {RUN_ENTRY!r} entry is not torchresume's run metadata "
                                     "(a JSON object); the file is damaged or was crafted")
    return {"info": info}


def load(f: BinaryIO, size: int, where: str, *, dec_key: bytes | None,
         verify: bool = True) -> tuple[dict[str, Any], bool]:
    """(entries, encrypted) of a MindSpore checkpoint file."""
    first = f.read(4)
    f.seek(0)
    if mindspore_crypto.mode_of(first) is not None:
        plain = mindspore_crypto.decrypt(f, size, dec_key, where)
        if not mindspore.looks_like(bytes(plain[:16])):
            from torchresume.errors import DecryptionError
            raise DecryptionError(f"{where}: decryption gave no MindSpore checkpoint: the key "
                                  "is wrong or the file was modified")
        # Parse the plaintext in place (BytesIO would copy it): peak ~2x the file, not 3x.
        memfile: Any = _MemoryFile(plain)
        return mindspore.read(memfile, len(plain), where, verify=verify), True
    if dec_key is not None:
        from torchresume.errors import DecryptionError
        raise DecryptionError(f"{where}: dec_key was given but the MindSpore checkpoint is not "
                              "encrypted; drop dec_key")
    entries = mindspore.read(f, size, where, verify=verify)
    if verify and mindspore.crc_footer(f, size) is None:
        log.warning("%s: a MindSpore checkpoint without a CRC footer: nothing protects it, a damaged byte would "
                    "load unnoticed (save it with crc_check=True)", where)
    return entries, False


class _MemoryFile(io.RawIOBase):
    """A read-only, seekable file over a bytearray, without copying it."""

    def __init__(self, data: bytearray) -> None:
        self._view, self._pos = memoryview(data), 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        chunk = self._view[self._pos:self._pos + len(target)]
        target[:len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)

    def read(self, size: int = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else self._pos + size
        chunk = bytes(self._view[self._pos:end])
        self._pos += len(chunk)
        return chunk
