"""The native checkpoint file: a safetensors file whose metadata holds the rest.

Layout (docs/FORMAT.md is the exact spec):

    u64 little-endian N | N bytes of JSON header (space padded to 8) | tensor bytes

The header maps tensor names to dtype/shape/data_offsets, as safetensors does,
plus ``__metadata__`` = {"format": "pt", "torchresume": <JSON string>,
"torchresume_check": <xxh3 of the header>}. The torchresume JSON holds the
format version, the kind of state, the skeleton that rebuilds nested state,
user info (epoch, step, append_dict) and an xxh3-64 digest of every tensor.

This module turns tensors + metadata into bytes and back; it never touches
the filesystem beyond the file object it is handed.
"""

from __future__ import annotations

import contextlib
import gc
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import torch

from torchresume.errors import CorruptCheckpointError, UnsupportedFormatError
from torchresume.format import checksum, stream_read
from torchresume.format.dtypes import FROM_SAFETENSORS, TO_SAFETENSORS, itemsize
from torchresume.storage.json_text import loads  # the one typed JSON parser (re-exported)

FORMAT_NAME = "torchresume"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
# Files with at least this much tensor data pad the header so the data starts on a page:
# written with O_DIRECT from page-aligned memory and mapped page-aligned when read.
PAGE = 4096
PAGE_ALIGN_MIN = 1 << 20
# What a file's size can hold: at most one tensor per MIN_TENSOR_BYTES bytes of the file (a real
# entry takes ~100 bytes of header for its index entry, checksum and skeleton, plus its data), and
# at most one JSON container per CONTAINER_BYTES bytes of header. Each parsed entry costs ~1 KB of
# memory, so a hostile header of a million empty tensors is refused before it is parsed (memory and
# time stay within ~10x the file's size).
MIN_TENSOR_BYTES = 128
SMALL_FILE_TENSORS = 1024  # allowed whatever the size (bounded cost): small files of many scalars exist
CONTAINER_BYTES = 16
# Each dimension and the product of the non-zero ones must fit torch's int64 sizes and strides.
MAX_NUMEL = 2**63 - 1
MAX_DIMS = 64


@dataclass(slots=True)
class TensorPlace:
    """One tensor's place in the file."""

    name: str
    dtype: torch.dtype
    shape: list[int]
    begin: int
    end: int


@dataclass
class Header:
    """A parsed, validated header. ``meta`` is the torchresume JSON, or None for plain safetensors."""

    entries: list[TensorPlace]
    data_start: int
    data_size: int
    meta: dict[str, Any] | None

    @property
    def kind(self) -> str:
        return str(self.meta.get("kind", "tensors")) if self.meta else "safetensors"


@dataclass
class Encoded:
    """A checkpoint ready to write: the header bytes, then each tensor's bytes in order."""

    header: bytes
    chunks: list[memoryview]

    @property
    def size(self) -> int:
        return len(self.header) + sum(c.nbytes for c in self.chunks)

    def parts(self) -> list[memoryview]:
        return [memoryview(self.header), *self.chunks]


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """A zero-copy byte view of a contiguous CPU tensor."""
    flat = tensor.reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")  # type: ignore[arg-type]


def prepare(tensor: torch.Tensor, name: str) -> torch.Tensor:
    """Detach, move to CPU and make contiguous; reject dtypes the format cannot hold."""
    if tensor.dtype not in TO_SAFETENSORS:
        raise TypeError(f"tensor {name!r} has dtype {tensor.dtype}, which the checkpoint "
                        f"format cannot store; convert it to one of "
                        f"{sorted(str(d) for d in TO_SAFETENSORS)}")
    if tensor.is_sparse or tensor.layout != torch.strided:
        raise TypeError(f"tensor {name!r} is {tensor.layout}; call .to_dense() before saving")
    out = tensor.detach()
    if out.device.type != "cpu":
        out = out.cpu()
    return out.contiguous()


def encode(tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None) -> Encoded:
    """Lay out ``tensors`` (already prepared) and their checksums into an Encoded file."""
    # Largest element size first keeps every tensor aligned to its own itemsize,
    # so loading can view the data as the right dtype without copying.
    order = sorted(tensors, key=lambda n: -tensors[n].element_size())
    index: dict[str, Any] = {}
    digests: dict[str, str] = {}
    offset = 0
    for name in order:
        t = tensors[name]
        data = tensor_bytes(t)
        index[name] = {"dtype": TO_SAFETENSORS[t.dtype], "shape": list(t.shape),
                       "data_offsets": [offset, offset + data.nbytes]}
        digests[name] = checksum.digest(data)
        offset += data.nbytes
    chunks = [tensor_bytes(run) for run in _adjacent_runs([tensors[n] for n in order])]
    metadata: dict[str, str] = {"format": "pt"}
    if meta is not None:
        full = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **meta,
                "checksums": {"algorithm": checksum.ALGORITHM, "tensors": digests}}
        metadata[FORMAT_NAME] = json.dumps(full, separators=(",", ":"), allow_nan=False)
        metadata["torchresume_check"] = _header_check(index, metadata[FORMAT_NAME])
    header = json.dumps({"__metadata__": metadata, **index}, separators=(",", ":")).encode()
    align = PAGE if offset >= PAGE_ALIGN_MIN else 8
    header += b" " * (-(len(header) + 8) % align)
    return Encoded(struct.pack("<Q", len(header)) + header, chunks)


def _adjacent_runs(ordered: list[torch.Tensor]) -> list[torch.Tensor]:
    """``ordered`` with neighbours that sit back to back in one storage merged into one uint8 tensor.

    Tensors staged for an async save are laid out this way (staging.py), so their
    data region becomes one run the O_DIRECT writer sends from memory as it is.
    """
    runs: list[torch.Tensor] = []
    start = end = 0
    storage: torch.UntypedStorage | None = None
    for t in ordered:
        begin = int(t.storage_offset()) * t.element_size()
        size = t.numel() * t.element_size()
        if storage is not None and begin == end and t.untyped_storage().data_ptr() == storage.data_ptr():
            end += size
            continue
        if storage is not None:
            runs.append(_bytes_of(storage, start, end))
        storage, start, end = t.untyped_storage(), begin, begin + size
    if storage is not None:
        runs.append(_bytes_of(storage, start, end))
    return runs


def _bytes_of(storage: torch.UntypedStorage, begin: int, end: int) -> torch.Tensor:
    return torch.empty(0, dtype=torch.uint8).set_(storage, begin, (end - begin,))  # type: ignore[call-overload]


def _header_check(index: dict[str, Any], meta_json: str) -> str:
    canonical = json.dumps(index, sort_keys=True, separators=(",", ":"))
    return checksum.digest((canonical + "\n" + meta_json).encode())


def read_header(f: BinaryIO, size: int, where: str) -> Header:
    """Read and validate the header of a file of ``size`` bytes; ``where`` names it in errors."""
    first = f.read(8)
    if len(first) < 8:
        raise CorruptCheckpointError(f"{where}: truncated: the file has {size} bytes, "
                                     "too few for a checkpoint header")
    (n,) = struct.unpack("<Q", first)
    if n > MAX_HEADER_BYTES:
        raise CorruptCheckpointError(f"{where}: header claims {n} bytes (limit "
                                     f"{MAX_HEADER_BYTES}); the file is damaged or not a checkpoint")
    if n + 8 > size:
        raise CorruptCheckpointError(f"{where}: truncated: header claims {n} bytes but the "
                                     f"file has only {size}")
    raw = f.read(n)
    if len(raw) < n:
        raise CorruptCheckpointError(f"{where}: truncated while reading the header")
    containers = raw.count(b"{") + raw.count(b"[")
    if containers > 64 + n // CONTAINER_BYTES:
        raise CorruptCheckpointError(f"{where}: header holds {containers} JSON objects and lists in {n} bytes, "
                                     "more than a checkpoint header has; the file is damaged or hostile")
    _check_count(raw.count(b'"dtype"'), size, where)  # before parsing; _validate counts again after it
    with paused_gc():
        doc = loads(raw, where, "header")
        if not isinstance(doc, dict):
            raise CorruptCheckpointError(f"{where}: header is JSON but not an object")
        return _validate(doc, n, size, where)


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """The cyclic collector paused while a header's many acyclic objects are made: it would otherwise
    rescan them again and again (a header of 200k entries parsed 2.5x slower)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _validate(doc: dict[str, Any], n: int, size: int, where: str) -> Header:
    raw_meta = doc.pop("__metadata__", None) or {}
    if not isinstance(raw_meta, dict) or not all(isinstance(v, str) for v in raw_meta.values()):
        raise CorruptCheckpointError(f"{where}: __metadata__ must map strings to strings")
    _check_count(len(doc), size, where)
    entries = [_entry(name, spec, where) for name, spec in doc.items()]
    data_size = size - 8 - n
    _check_offsets(entries, data_size, where)
    meta = _parse_meta(raw_meta, doc, entries, where)
    return Header(entries, 8 + n, data_size, meta)


def _check_count(tensors: int, size: int, where: str) -> None:
    if tensors > SMALL_FILE_TENSORS + size // MIN_TENSOR_BYTES:
        raise CorruptCheckpointError(f"{where}: header lists {tensors} tensors, more than a file of {size} "
                                     f"bytes holds (one per {MIN_TENSOR_BYTES} bytes); the file is damaged or hostile")


def _entry(name: str, spec: Any, where: str) -> TensorPlace:
    bad = CorruptCheckpointError(f"{where}: tensor {name!r} has a malformed header entry")
    if not isinstance(spec, dict):
        raise bad
    if "dtype" not in spec or "data_offsets" not in spec:  # e.g. a damaged "__metadata__" key
        raise CorruptCheckpointError(f"{where}: header entry {name!r} is not a tensor (it has no dtype or "
                                     "data_offsets); the header is damaged")
    dtype = FROM_SAFETENSORS.get(spec["dtype"]) if isinstance(spec["dtype"], str) else None
    shape, offsets = spec.get("shape"), spec.get("data_offsets")
    if dtype is None:
        raise CorruptCheckpointError(f"{where}: tensor {name!r} has unknown dtype {spec.get('dtype')!r}")
    if (not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(type(d) is int and d >= 0 for d in shape)
            or not isinstance(offsets, list) or len(offsets) != 2
            or not all(type(o) is int and o >= 0 for o in offsets) or offsets[0] > offsets[1]):
        raise bad
    numel = 1
    strides = 1
    for d in shape:
        numel *= d
        strides *= max(d, 1)
    if strides > MAX_NUMEL:
        raise CorruptCheckpointError(f"{where}: tensor {name!r} has shape {shape}, larger than a tensor can be; "
                                     "the header is damaged")
    if numel * itemsize(dtype) != offsets[1] - offsets[0]:
        raise CorruptCheckpointError(f"{where}: tensor {name!r} shape {shape} needs "
                                     f"{numel * itemsize(dtype)} bytes but its offsets span "
                                     f"{offsets[1] - offsets[0]}")
    return TensorPlace(name, dtype, shape, offsets[0], offsets[1])


def _check_offsets(entries: list[TensorPlace], data_size: int, where: str) -> None:
    end = 0
    for e in sorted(entries, key=lambda e: (e.begin, e.end)):
        if e.begin != end:
            raise CorruptCheckpointError(f"{where}: tensor {e.name!r} starts at byte {e.begin} "
                                         f"but the previous data ends at {end} (overlap or gap)")
        end = e.end
    if end > data_size:
        raise CorruptCheckpointError(f"{where}: truncated: tensor data needs {end} bytes but "
                                     f"the file holds {data_size}")
    if end < data_size:
        raise CorruptCheckpointError(f"{where}: {data_size - end} unexpected trailing bytes "
                                     "after the tensor data")


def _parse_meta(raw_meta: dict[str, str], index: dict[str, Any], entries: list[TensorPlace],
                where: str) -> dict[str, Any] | None:
    text = raw_meta.get(FORMAT_NAME)
    if text is None and "torchresume_check" not in raw_meta:
        return None  # a plain safetensors file
    if text is None:
        raise CorruptCheckpointError(f"{where}: torchresume metadata is missing though its "
                                     "checksum is present; the header is damaged")
    if raw_meta.get("torchresume_check") != _header_check(index, text):
        raise CorruptCheckpointError(f"{where}: header checksum mismatch; the header was "
                                     "modified or damaged")
    meta = loads(text, where, "torchresume metadata")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise CorruptCheckpointError(f"{where}: torchresume metadata is malformed")
    version = meta.get("version")
    if type(version) is not int or version > FORMAT_VERSION:
        raise UnsupportedFormatError(f"{where}: written by format version {version}; this "
                                     f"torchresume reads up to {FORMAT_VERSION}: upgrade torchresume")
    checksums = meta.get("checksums")
    digests = checksums.get("tensors") if isinstance(checksums, dict) else None
    if not isinstance(digests, dict) or set(digests) != {e.name for e in entries}:
        raise CorruptCheckpointError(f"{where}: checksum table does not match the tensors")
    for name in ("info", "append"):
        if not isinstance(meta.get(name, {}), dict):
            raise CorruptCheckpointError(f"{where}: torchresume metadata's {name!r} is not an object; "
                                         "the header is damaged")
    if not isinstance(meta.get("kind", ""), str):
        raise CorruptCheckpointError(f"{where}: torchresume metadata is malformed")
    return meta


def read_tensors(f: BinaryIO, header: Header, where: str, *,
                 verify: bool = True) -> dict[str, torch.Tensor]:
    """Read the tensor data after the header in one pass and return views of it, checksums verified.

    format/stream_read.py reads it into one preallocated buffer, hashing each chunk as it arrives.
    """
    digests = header.meta["checksums"]["tensors"] if (verify and header.meta) else None
    buf = stream_read.read_data(f, header, where, digests)
    typed: dict[torch.dtype, torch.Tensor | None] = {}
    with paused_gc():
        return {e.name: _view(buf, e, typed) for e in header.entries}


def _view(buf: torch.Tensor, e: TensorPlace, typed: dict[torch.dtype, torch.Tensor | None]) -> torch.Tensor:
    """Tensor ``e`` as a view of the data: one strided view of the data seen as its dtype (one tensor
    made per entry, not three: a header of many small tensors loads in linear, small time)."""
    size = itemsize(e.dtype)
    if e.dtype not in typed:
        whole = buf[:buf.numel() - buf.numel() % size]
        typed[e.dtype] = whole.view(e.dtype) if whole.storage_offset() % size == 0 else None
    base = typed[e.dtype]
    if base is not None and e.begin % size == 0:
        strides, step = [], 1
        for d in reversed(e.shape):
            strides.append(step)
            step *= max(d, 1)
        return base.as_strided(e.shape, strides[::-1], base.storage_offset() + e.begin // size)
    # Foreign files may not be aligned: copy instead of viewing.
    return buf[e.begin:e.end].clone().view(e.dtype).view(e.shape)
