"""MindSpore's protobuf ``.ckpt`` files: the wire codec, the reader and the writer.

A MindSpore checkpoint is a run of serialized ``Checkpoint`` messages
(``repeated Value value = 1``), one ``Value{tag = 1, tensor = 2 | maptensor = 3}``
each, where ``TensorProto{repeated int64 dims = 1, string tensor_type = 2,
bytes tensor_content = 3}``. Tensors over 512 MiB are split into several
same-tag Values with the full dims; strings are ``tensor_type "str"`` holding
UTF-32LE text. An optional 17-byte footer ``b"crc_num"`` + the CRC32 of every
byte before it (10 bytes big-endian) may follow. Encrypted files are handled
by :mod:`torchresume.format.mindspore_crypto`.

This module parses and writes that wire format by hand (no protobuf package):
tensor bytes are read straight into their final tensors and written from the
tensors' own memory, so neither direction holds a second copy of the state.
Unlike MindSpore, it refuses what it cannot load faithfully: a CRC mismatch
(checked whenever the footer is there), a truncated entry, content whose
length does not match the dims, an unknown tensor type. What it cannot
detect: a CRC-less file cut exactly between two entries (it reads as a
smaller valid checkpoint, as in MindSpore).
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO

import torch

from torchresume.errors import CorruptCheckpointError, UnsupportedFormatError

SPLIT = 512 * 1024 * 1024  # MindSpore cuts tensor content at exactly this many bytes
# What a file's size can hold: at most one entry per MIN_ENTRY_BYTES bytes (as native.MIN_TENSOR_BYTES:
# each entry read costs ~1 KB of memory and some microseconds, so a file of a million tiny entries is
# refused as it is read instead of taking minutes and gigabytes).
MIN_ENTRY_BYTES = 128
SMALL_FILE_ENTRIES = 1024  # allowed whatever the size: small files of many scalars exist (MindSpore's own)
MAX_DIMS = 64
CRC_TAG = b"crc_num"
CRC_FOOTER = len(CRC_TAG) + 10

DTYPES: dict[str, torch.dtype] = {
    "Int8": torch.int8, "UInt8": torch.uint8, "Int16": torch.int16, "UInt16": torch.uint16,
    "Int32": torch.int32, "UInt32": torch.uint32, "Int64": torch.int64, "UInt64": torch.uint64,
    "Float16": torch.float16, "Float32": torch.float32, "Float64": torch.float64,
    "Bool": torch.bool, "BFloat16": torch.bfloat16,
}
TYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
STRING_TYPE = "str"


# -- wire primitives ----------------------------------------------------------------------

def varint(n: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int (negative int64: two's complement)."""
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """(value, next position); IndexError past the end, ValueError if over 10 bytes."""
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ValueError("varint longer than 10 bytes")


def looks_like(first: bytes) -> bool:
    """Do these first bytes start a Checkpoint message (field 1, then Value.tag = 1)?

    A Value always begins with its tag (0x0A, length, name). The name bytes seen
    must be non-zero: a safetensors file (u64 length, then ``{``) never passes.
    """
    try:
        if first[0] != 0x0A:
            return False
        _, pos = read_varint(first, 1)
        if first[pos] != 0x0A:
            return False
        length, pos = read_varint(first, pos + 1)
    except (IndexError, ValueError):
        return False
    return length > 0 and 0 not in first[pos:pos + length]


# -- reading ------------------------------------------------------------------------------

@dataclass
class MindSporeValue:
    """One tensor (its pieces joined) or string as the file describes it."""

    name: str
    type_name: str
    dims: list[int]
    pieces: list[tuple[int, int]]  # (offset, length) of each piece of content in the file

    @property
    def size(self) -> int:
        return sum(n for _, n in self.pieces)


class _Source:
    """Reads a file in order, feeding the CRC with exactly the bytes consumed.

    Reads ahead in blocks of READ_AHEAD bytes: the many small reads of entry heads cost one
    system call per block, not two per entry (a file of many small entries parsed 10x faster).
    """

    READ_AHEAD = 1 << 20

    def __init__(self, f: BinaryIO, end: int, crc: bool) -> None:
        self.f, self.end, self.crc_on = f, end, crc
        self.pos, self.crc = 0, 0
        self._buf, self._off = b"", 0  # read ahead: self._buf[self._off:] lies at self.pos

    def _fill(self, n: int) -> None:
        """Hold at least ``n`` bytes ahead (fewer at the end of the file)."""
        have = len(self._buf) - self._off
        if have >= n:
            return
        want = min(max(n, self.READ_AHEAD), self.end - self.pos) - have
        more = self.f.read(want) if want > 0 else b""
        self._buf, self._off = self._buf[self._off:] + more, 0

    def _take(self, n: int) -> bytes:
        self._fill(n)
        data = self._buf[self._off:self._off + n]
        self._off += len(data)
        self.pos += len(data)
        if self.crc_on:
            self.crc = zlib.crc32(data, self.crc)
        return data

    def peek(self, n: int) -> bytes:
        """Up to ``n`` bytes from the current position (not before ``end``), not consumed."""
        self._fill(n)
        return self._buf[self._off:self._off + min(n, self.end - self.pos)]

    def consume(self, data: bytes) -> None:
        self._take(len(data))

    def read(self, n: int) -> bytes:
        return self._take(n)

    def readinto(self, view: memoryview) -> int:
        ahead = self._buf[self._off:self._off + len(view)]
        view[:len(ahead)] = ahead
        self._off += len(ahead)
        got = len(ahead)
        while got < len(view):
            n = self.f.readinto(view[got:])  # type: ignore[attr-defined]
            if not n:
                break
            got += n
        self.pos += got
        if self.crc_on:
            self.crc = zlib.crc32(view[:got], self.crc)
        return got

    def skip(self, n: int) -> None:
        ahead = min(n, len(self._buf) - self._off)
        self._take(ahead)
        n -= ahead
        if self.crc_on:
            while n:
                chunk = self.f.read(min(n, 16 << 20))
                if not chunk:
                    return
                self.pos += len(chunk)
                self.crc = zlib.crc32(chunk, self.crc)
                n -= len(chunk)
        elif n:
            self.f.seek(n, io.SEEK_CUR)
            self.pos += n


def crc_footer(f: BinaryIO, size: int) -> int | None:
    """The CRC32 stored in the footer, or None when the file has no footer."""
    if size < CRC_FOOTER:
        return None
    f.seek(size - CRC_FOOTER)
    tail = f.read(CRC_FOOTER)
    f.seek(0)
    if not tail.startswith(CRC_TAG):
        return None
    return int.from_bytes(tail[len(CRC_TAG):], "big")


def read(f: BinaryIO, size: int, where: str, *, verify: bool = True) -> dict[str, Any]:
    """Every entry of a plain MindSpore checkpoint as ``name -> tensor | str``, in file order.

    Same-name consecutive pieces are joined. The CRC footer, when present, is
    always checked (``verify=False`` skips it, for speed, as MindSpore does).
    """
    expected_crc = crc_footer(f, size)
    end = size - CRC_FOOTER if expected_crc is not None else size
    check = verify and expected_crc is not None
    src = _Source(f, end, check)
    out: dict[str, Any] = {}
    last: str | None = None
    partial: dict[str, tuple[torch.Tensor, int]] = {}
    index = 0
    while src.pos < end:
        index += 1
        _check_count(index, size, where)
        name, type_name, dims, content_len = _read_value_head(src, where, index)
        if type_name == STRING_TYPE:
            raw = src.read(content_len)
            _need(len(raw), content_len, where, name)
            out[name] = _decode_string(raw, where, name)
            last = name
            continue
        dtype = _dtype(type_name, where, name)
        if name == last and name in partial:  # a further piece of a split tensor
            flat, filled = partial[name]
        else:
            if name in out:
                raise CorruptCheckpointError(f"{where}: the entry {name!r} appears twice, not as "
                                             "consecutive pieces of one tensor; the file is damaged")
            need = _numel(dims, where, name) * dtype.itemsize
            # Check before allocating: no tensor is larger than what is left of the file
            # (later same-name pieces may hold the rest: MindSpore splits at SPLIT bytes).
            if content_len < need and need > end - src.pos:
                raise CorruptCheckpointError(_short(where, name, content_len, need))
            flat = torch.empty(need, dtype=torch.uint8)
            filled = 0
            out[name] = flat  # replaced by the typed view once complete
        total = flat.numel()
        if filled + content_len > total:
            raise CorruptCheckpointError(
                f"{where}: the tensor {name!r} has {filled + content_len} bytes of content but "
                f"its shape {dims} and type {type_name} need {total}; the file is damaged "
                "(MindSpore would silently cut it)")
        got = src.readinto(flat.numpy().data[filled:filled + content_len])
        _need(got, content_len, where, name)
        filled += content_len
        partial[name] = (flat, filled)
        last = name
        if filled == total:
            out[name] = _typed(flat, dtype, dims)
    for name, (flat, filled) in partial.items():
        if filled != flat.numel():
            raise CorruptCheckpointError(_short(where, name, filled, flat.numel()))
    if check and src.crc != expected_crc:
        raise CorruptCheckpointError(
            f"{where}: CRC mismatch: the footer says {expected_crc:#010x}, the content gives "
            f"{src.crc:#010x}; the file was modified or damaged after it was written "
            "(restore it from a copy or use an older checkpoint)")
    if not out:
        raise CorruptCheckpointError(f"{where}: the MindSpore checkpoint holds no entries")
    return out


def scan(f: BinaryIO, size: int, where: str) -> list[MindSporeValue]:
    """The entries (names, types, dims, where their content lies) without reading content."""
    has_crc = crc_footer(f, size) is not None
    end = size - CRC_FOOTER if has_crc else size
    src = _Source(f, end, False)
    entries: list[MindSporeValue] = []
    index = 0
    while src.pos < end:
        index += 1
        _check_count(index, size, where)
        name, type_name, dims, content_len = _read_value_head(src, where, index)
        if src.pos + content_len > end:
            raise CorruptCheckpointError(_truncated(where, name, content_len, end - src.pos))
        if entries and entries[-1].name == name:
            entries[-1].pieces.append((src.pos, content_len))
        else:
            entries.append(MindSporeValue(name, type_name, dims, [(src.pos, content_len)]))
        src.skip(content_len)
    return entries


def _check_count(index: int, size: int, where: str) -> None:
    if index > SMALL_FILE_ENTRIES + size // MIN_ENTRY_BYTES:
        raise CorruptCheckpointError(f"{where}: more than {index - 1} entries in {size} bytes, more than a "
                                     f"MindSpore checkpoint of this size holds (one per {MIN_ENTRY_BYTES} bytes); "
                                     "the file is damaged or hostile")


class _NeedMore(Exception):
    """The buffer ends inside the Value's head: read more and parse again."""


class _Truncated(Exception):
    """The Value's length runs past the end of the file: (bytes needed, bytes there)."""


def _read_value_head(src: _Source, where: str, index: int) -> tuple[str, str, list[int], int]:
    """Parse one top-level Value up to its tensor content; consume exactly those bytes."""
    start = src.pos
    want = 256
    while True:
        buf = src.peek(want)
        try:
            name, type_name, dims, content_len, used = _parse_head(buf, src.end - start, where)
            break
        except _NeedMore:
            if len(buf) < want:  # the file ends inside the head
                raise CorruptCheckpointError(_truncated(where, f"entry {index}", want,
                                                        len(buf))) from None
            want *= 4
        except _Truncated as cut:
            raise CorruptCheckpointError(_truncated(where, f"entry {index} at byte {start}",
                                                    *cut.args)) from None
        except UnicodeDecodeError:
            raise CorruptCheckpointError(f"{where}: entry {index} at byte {start} has a name "
                                         "or type that is not UTF-8; the file is damaged") from None
        except ValueError as exc:
            raise CorruptCheckpointError(f"{where}: entry {index} at byte {start} is damaged "
                                         f"({exc}); the file is damaged or not a MindSpore "
                                         "checkpoint") from None
    src.consume(buf[:used])
    return name, type_name, dims, content_len


def _parse_head(buf: bytes, room: int, where: str) -> tuple[str, str, list[int], int, int]:
    """(name, type, dims, content length, bytes used) of the Value at the start of ``buf``."""

    def vint(pos: int) -> tuple[int, int]:
        try:
            return read_varint(buf, pos)
        except IndexError:
            raise _NeedMore() from None

    def take(pos: int, n: int) -> bytes:
        if pos + n > len(buf):
            raise _NeedMore()
        return buf[pos:pos + n]

    if not buf:
        raise _NeedMore()
    if buf[0] != 0x0A:
        raise ValueError(f"field key {buf[0]:#04x} where a Value (0x0a) must start")
    value_len, pos = vint(1)
    value_end = pos + value_len
    if value_end > room:
        raise _Truncated(value_end, room)
    name: str | None = None
    while True:
        if pos >= value_end:
            raise ValueError(f"the entry {name!r} has no tensor")
        key, pos = vint(pos)
        n, pos = vint(pos)
        if key == 0x0A:
            name = take(pos, n).decode("utf-8")
            pos += n
        elif key == 0x12:
            if pos + n != value_end:
                raise ValueError("bytes after the tensor in a Value")
            break
        elif key == 0x1A:
            raise UnsupportedFormatError(
                f"{where}: entry {name!r} is a MindSpore MapTensor, which torchresume does "
                "not read; export it as ordinary tensors")
        else:
            raise ValueError(f"unexpected field key {key:#x} in a Value")
    if name is None:
        raise ValueError("the entry has no name")
    type_name: str | None = None
    dims: list[int] = []
    while True:
        if pos >= value_end:
            raise ValueError(f"the tensor {name!r} has no content field")
        key, pos = vint(pos)
        if key == 0x08:
            d, pos = vint(pos)
            dims.append(d - (1 << 64) if d >= 1 << 63 else d)
        elif key == 0x0A:  # packed dims
            n, pos = vint(pos)
            stop = pos + n
            take(pos, n)
            while pos < stop:
                d, pos = vint(pos)
                dims.append(d - (1 << 64) if d >= 1 << 63 else d)
        elif key == 0x12:
            n, pos = vint(pos)
            type_name = take(pos, n).decode("utf-8")
            pos += n
        elif key == 0x1A:
            content_len, pos = vint(pos)
            if pos + content_len != value_end:
                raise ValueError(f"the content of {name!r} is not the last field of its entry")
            break
        else:
            raise ValueError(f"unexpected field key {key:#x} in the tensor {name!r}")
    if type_name is None:
        raise ValueError(f"the tensor {name!r} has no tensor type")
    return name, type_name, dims, content_len, pos


def _truncated(where: str, what: str, needed: int, have: int) -> str:
    return (f"{where}: truncated: {what} needs {needed} bytes but only {have} remain; the "
            "write was cut off (use an older checkpoint)")


def _short(where: str, name: str, have: int, need: int) -> str:
    return (f"{where}: the tensor {name!r} has {have} bytes of content but its shape and type "
            f"need {need}; the file is damaged or truncated (MindSpore would silently pad it)")


def _need(got: int, want: int, where: str, name: str) -> None:
    if got != want:
        raise CorruptCheckpointError(_truncated(where, f"the content of {name!r}", want, got))


def _dtype(type_name: str, where: str, name: str) -> torch.dtype:
    dtype = DTYPES.get(type_name)
    if dtype is None:
        raise UnsupportedFormatError(
            f"{where}: the tensor {name!r} has the tensor type {type_name!r}, which torchresume "
            f"does not read (known: {', '.join(DTYPES)}, str)")
    return dtype


def _numel(dims: list[int], where: str, name: str) -> int:
    if any(d < 0 for d in dims):
        raise CorruptCheckpointError(f"{where}: the tensor {name!r} has a negative dimension "
                                     f"{dims}; the file is damaged")
    n = strides = 1
    for d in dims:
        n *= d
        strides *= max(d, 1)
    if len(dims) > MAX_DIMS or strides >= 2**63:  # torch's sizes and strides are int64
        shown = dims if len(dims) <= 8 else f"{len(dims)} dims"
        raise CorruptCheckpointError(f"{where}: the tensor {name!r} has shape {shown}, larger than a tensor "
                                     "can be; the file is damaged")
    return n


def _typed(flat: torch.Tensor, dtype: torch.dtype, dims: list[int]) -> torch.Tensor:
    if dtype == torch.bool:  # MindSpore reads any nonzero byte as True
        return (flat != 0).reshape(dims)
    return flat.view(dtype).reshape(dims)


def _decode_string(raw: bytes, where: str, name: str) -> str:
    if len(raw) % 4:
        raise CorruptCheckpointError(f"{where}: the string {name!r} has {len(raw)} bytes, not a "
                                     "whole number of UTF-32 characters; the file is damaged")
    try:
        return raw.decode("utf-32-le").rstrip("\x00")
    except UnicodeDecodeError:
        raise CorruptCheckpointError(f"{where}: the string {name!r} is not valid UTF-32 text; "
                                     "the file is damaged") from None


# -- writing ------------------------------------------------------------------------------

def _value_parts(name: str, type_name: str, dims: list[int],
                 content: memoryview) -> list[bytes | memoryview]:
    """One top-level Checkpoint message holding one Value, as (header, content) parts."""
    tensor = bytearray()
    for d in dims:
        tensor += b"\x08" + varint(d)
    t = type_name.encode()
    tensor += b"\x12" + varint(len(t)) + t
    tensor += b"\x1a" + varint(len(content))
    tensor_len = len(tensor) + len(content)
    n = name.encode()
    value = b"\x0a" + varint(len(n)) + n + b"\x12" + varint(tensor_len)
    value_len = len(value) + tensor_len
    return [b"\x0a" + varint(value_len) + value + bytes(tensor), content]


def _content(tensor: torch.Tensor) -> memoryview:
    t = tensor.detach().to("cpu").contiguous()
    flat = t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)
    return flat.numpy().data.cast("B")


def encode(entries: dict[str, Any], *, crc_check: bool = False) -> list[bytes | memoryview]:
    """The parts of a MindSpore checkpoint of ``name -> tensor | str | bool | int | float``.

    Python scalars are stored as MindSpore's append_dict stores them: int as
    Int64, bool as Bool, float as Float32 (0-d). Empty tensors are skipped, as
    MindSpore skips them. Tensors over 512 MiB are split as MindSpore splits them.
    """
    parts: list[bytes | memoryview] = []
    for name, value in entries.items():
        if isinstance(value, str):
            raw = value.encode("utf-32-le") or b"\0" * 4  # numpy's '' is one NUL character
            parts += _value_parts(name, STRING_TYPE, [0], memoryview(raw))
            continue
        tensor = _as_tensor(name, value)
        if tensor.numel() == 0:
            continue
        type_name = TYPE_NAMES.get(tensor.dtype)
        if type_name is None:
            raise TypeError(f"{name}: MindSpore checkpoints cannot hold {tensor.dtype}; cast it "
                            f"to one of {', '.join(str(d) for d in DTYPES.values())}")
        content = _content(tensor)
        dims = list(tensor.shape)
        for start in range(0, len(content), SPLIT):
            parts += _value_parts(name, type_name, dims, content[start:start + SPLIT])
    if crc_check:
        crc = 0
        for part in parts:
            crc = zlib.crc32(part, crc)
        parts.append(CRC_TAG + crc.to_bytes(10, "big"))
    return parts


def _as_tensor(name: str, value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, bool):
        return torch.tensor(value, dtype=torch.bool)
    if isinstance(value, int):
        return torch.tensor(value, dtype=torch.int64)
    if isinstance(value, float):
        return torch.tensor(value, dtype=torch.float32)
    raise TypeError(f"{name}: a MindSpore checkpoint holds tensors, int, float, bool and str, "
                    f"not {type(value).__name__}")
