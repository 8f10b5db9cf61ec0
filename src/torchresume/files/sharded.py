"""The on-disk checks of a sharded (torch.distributed) directory checkpoint, without torch.distributed.

A sharded checkpoint is a directory checkpoint whose manifest ``info.layout``
is ``torchresume-dcp``: besides the parts it holds ``dcp_metadata.json`` (DCP's
metadata as JSON, its size and xxh3 recorded in the manifest). This module owns
what a reader checks before it trusts any of it:

* ``check_manifest``: the sharded fields of the manifest are typed, and every file
  name it gives (rank parts, the metadata file) is a plain name inside the checkpoint
  (its seal, digest and HMAC, is ``files/seal.py``'s, as for every directory manifest).
* ``rank_part_info``/``check_rank_info``: each rank part's own (with encryption,
  authenticated) metadata says the sharded version, step and epoch, so a manifest
  set back to version 1 (no HMAC) or given another step is refused by a reader with
  the key.
* ``metadata_doc``/``check``: ``dcp_metadata.json`` is the one committed, every
  chunk it names lies in a committed part, and the chunks of every tensor cover
  it exactly (inside its bounds, no overlap, no gap).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from typing import Any

import xxhash

from torchresume.errors import CorruptCheckpointError
from torchresume.format import native
from torchresume.storage import confine, resolve

LAYOUT = "torchresume-dcp"
METADATA_FILE = "dcp_metadata.json"
# dcp_metadata.json takes ~200 bytes per chunk: 1 GiB is ~5 million chunks (1024 ranks' shards of a
# few thousand tensors). Refused above it before it is read, so the chunk count (and what parsing and
# the coverage check of it cost) is bounded by a size the reader accepts.
MAX_METADATA_BYTES = 1 << 30
# Manifest version of a sharded checkpoint since its manifest carries a digest (files/seal.py) and its
# non-tensor values are typed JSON (version 1: neither).
VERSION = 2


def is_sharded(doc: dict[str, Any]) -> bool:
    """True for the manifest ``doc`` of a sharded checkpoint."""
    info = doc.get("info")
    return isinstance(info, dict) and info.get("layout") == LAYOUT


def check_name(path: str, name: Any, what: str, source: str = "manifest.json") -> str:
    """``name`` (the ``what`` that ``source`` of checkpoint ``path`` names) when it is a plain file name
    inside the checkpoint; else UnsafePathError naming it (``storage/confine.py``, the one check)."""
    return confine.check_name(name, f"{path}/{source} ({what})")


def check_manifest(path: str, doc: dict[str, Any]) -> None:
    """Raise CorruptCheckpointError unless the sharded fields of manifest ``doc`` (its parts and seal
    already checked by ``directory.check_manifest``) are typed and name only files inside the
    checkpoint: one rank part per rank of ``world_size``, each a listed part, and the metadata file's
    record."""
    where = f"{path}/manifest.json"
    info = doc["info"]
    rank_parts = info.get("rank_parts")
    if not isinstance(rank_parts, list) or not rank_parts:
        raise CorruptCheckpointError(f"{path}: the manifest of a sharded checkpoint lists no rank parts")
    listed = {p["file"] for p in doc["parts"]}
    for name in rank_parts:
        if check_name(path, name, "rank part") not in listed:
            raise CorruptCheckpointError(f"{where}: rank part {name!r} is not one of its parts; the manifest "
                                         "is damaged")
    if len(set(rank_parts)) != len(rank_parts):
        raise CorruptCheckpointError(f"{where}: names a rank part twice; the manifest is damaged")
    world = info.get("world_size")
    if type(world) is not int or world != len(rank_parts):
        raise CorruptCheckpointError(f"{where}: world_size {world!r:.40} is not the number of its rank parts "
                                     f"({len(rank_parts)}); the manifest is damaged")
    for key in ("step", "epoch"):
        if info.get(key) is not None and type(info[key]) is not int:
            raise CorruptCheckpointError(f"{where}: {key} {info[key]!r:.40} is not an integer; the manifest "
                                         "is damaged")
    rec = info.get("dcp_metadata")
    if not isinstance(rec, dict):
        raise CorruptCheckpointError(f"{path}: the manifest of a sharded checkpoint names no DCP metadata file")
    check_name(path, rec.get("file"), "dcp_metadata.file")
    if type(rec.get("size")) is not int or rec["size"] < 0 or not isinstance(rec.get("xxh3"), str):
        raise CorruptCheckpointError(f"{where}: the DCP metadata file's record has no valid size and xxh3; "
                                     "the manifest is damaged")


def rank_part_info(doc: dict[str, Any]) -> dict[str, Any]:
    """What the writer puts in every rank part's own metadata (encrypted and authenticated with the
    part when the checkpoint is): the sharded version, step and epoch of manifest ``doc``."""
    info = doc.get("info", {})
    return {"sharded_version": VERSION, "step": info.get("step"), "epoch": info.get("epoch")}


def check_rank_info(path: str, file: str, doc: dict[str, Any], part_info: dict[str, Any]) -> None:
    """Refuse a manifest whose version, step or epoch differ from those its rank part ``file`` holds
    (``part_info``): an encrypted part's are authenticated, so a manifest set back to version 1 (no
    HMAC) or given another step is caught by a reader with the key. Parts written before hold none."""
    if "sharded_version" not in part_info:
        return
    info = doc.get("info", {})
    said = {"sharded_version": doc.get("version"), "step": info.get("step"), "epoch": info.get("epoch")}
    for key, value in said.items():
        if part_info.get(key) != value:
            raise CorruptCheckpointError(f"{path}/manifest.json: {key} {value!r}, but rank part {file} was "
                                         f"written for {part_info.get(key)!r}; the manifest was changed")


def read_metadata_json(path: str, doc: dict[str, Any]) -> bytes:
    """The bytes of ``dcp_metadata.json``, checked against the size and digest in the manifest."""
    rec = doc["info"].get("dcp_metadata")
    if not isinstance(rec, dict):
        raise CorruptCheckpointError(f"{path}: the manifest of a sharded checkpoint names no DCP metadata file")
    name = check_name(path, rec.get("file"), "dcp_metadata.file")
    storage, where = resolve(path)
    size = rec.get("size")
    if type(size) is not int or size > MAX_METADATA_BYTES:  # before reading: what the checks cost follows it
        raise CorruptCheckpointError(f"{path}/{name}: the manifest says {size!r:.40} bytes, more than a DCP "
                                     f"metadata file holds ({MAX_METADATA_BYTES}); the manifest is damaged")
    try:
        f, actual = confine.open_member(storage, where, name, path)
    except FileNotFoundError:
        raise CorruptCheckpointError(f"{path}/{name}: missing; the sharded checkpoint cannot be loaded") from None
    with f:
        if actual != size:  # before reading: a declared size is what a reader may read
            raise CorruptCheckpointError(f"{path}/{name}: {actual} bytes, the manifest says {size!r}; the metadata "
                                         "file is damaged or was replaced")
        raw = bytes(f.read(actual))
    if len(raw) != size or xxhash.xxh3_64_hexdigest(raw) != rec.get("xxh3"):
        raise CorruptCheckpointError(f"{path}/{name}: does not match the size and digest in the "
                                     "manifest; the metadata file is damaged or was replaced")
    return raw


def metadata_doc(path: str, doc: dict[str, Any]) -> dict[str, Any]:
    """``dcp_metadata.json`` parsed (``format/native.py loads``, the one typed JSON parser), its
    schema checked (``check_metadata_schema``) and checked against the manifest ``doc`` (``check``)."""
    where = f"{path}/{METADATA_FILE}"
    meta = native.loads(read_metadata_json(path, doc), where, "the DCP metadata")
    check_metadata_schema(where, meta)
    committed = {p["file"]: p["size"] for p in doc["parts"]}
    for s in meta["storage_data"]:
        check_name(path, s["file"], "chunk file", METADATA_FILE)
        if s["file"] not in committed:
            raise missing_chunk(path, s["name"], s["file"])
        _check_at(path, s, committed[s["file"]])
    for fqn, md in meta["state_dict_metadata"].items():
        if not md.get("bytes"):
            check_coverage(path, fqn, md["size"], md["chunks"])
    return meta


# The largest offset, size or byte position a metadata file may hold (torch sizes are int64).
_MAX_INT = 2**63 - 1


def _int(value: Any, nullable: bool = False) -> bool:
    return (nullable and value is None) or (type(value) is int and 0 <= value <= _MAX_INT)


def _int_list(value: Any) -> bool:
    return isinstance(value, list) and len(value) <= 64 and all(_int(n) for n in value)


def _item_fault(md: Any) -> str:
    """What is wrong with one ``state_dict_metadata`` entry, or ''."""
    if not isinstance(md, dict):
        return "is not a record"
    if md.get("bytes") is True:
        return ""
    if not all(isinstance(md.get(k), str) for k in ("dtype", "layout", "memory_format")):
        return "has no dtype, layout or memory_format string"
    if not isinstance(md.get("requires_grad"), bool) or not _int_list(md.get("size")):
        return "has no valid requires_grad or size"
    chunks = md.get("chunks")
    if not isinstance(chunks, list) or not all(isinstance(c, list) and len(c) == 2 and _int_list(c[0])
                                               and _int_list(c[1]) for c in chunks):
        return "has chunks that are not [offsets, sizes] lists of integers"
    return ""


def _storage_fault(s: Any) -> str:
    """What is wrong with one ``storage_data`` record, or ''."""
    if not isinstance(s, dict):
        return "is not a record"
    if not all(isinstance(s.get(k), str) for k in ("fqn", "file", "name")):
        return "has no fqn, file or name string"
    offset = s.get("offset")
    if not (offset is None or _int_list(offset)) or not _int(s.get("index"), nullable=True):
        return "has no valid offset or index"
    if s.get("value", False) not in (True, False):
        return "has a value flag that is not a boolean"
    at = s.get("at")
    if at is not None and not (isinstance(at, list) and len(at) == 2 and all(_int(n) for n in at)
                               and isinstance(s.get("xxh3"), str)):
        return "has a byte range 'at' that is not two integers with an xxh3"
    return ""


def check_metadata_schema(where: str, meta: Any) -> None:
    """Every field of the parsed ``dcp_metadata.json`` that a reader uses, typed: the one schema check
    (``files/dcp_metadata.py`` decodes only what passed it). CorruptCheckpointError naming the fault."""
    def bad(why: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(f"{where}: {why}; the DCP metadata is damaged")
    if not isinstance(meta, dict) or meta.get("format") != "torchresume-dcp-metadata":
        raise CorruptCheckpointError(f"{where}: not a torchresume DCP metadata file")
    if type(meta.get("version", 1)) is not int:
        raise bad("its version is not an integer")
    sdm, planner, storage = meta.get("state_dict_metadata"), meta.get("planner_data"), meta.get("storage_data")
    if not isinstance(sdm, dict) or not isinstance(storage, list):
        raise bad("it has no state_dict_metadata object or storage_data list")
    for fqn, md in sdm.items():
        fault = _item_fault(md)
        if fault:
            raise bad(f"tensor {fqn!r:.80} {fault}")
    if planner is not None and not (isinstance(planner, dict) and all(isinstance(v, list) for v in planner.values())):
        raise bad("its planner_data is not an object of lists")
    for i, s in enumerate(storage):
        fault = _storage_fault(s)
        if fault:
            raise bad(f"storage record {i} {fault}")
    sm = meta.get("storage_meta")
    if sm is not None and not isinstance(sm, dict):
        raise bad("its storage_meta is not an object")


def check(path: str, doc: dict[str, Any]) -> None:
    """Raise CorruptCheckpointError unless the metadata matches the committed parts.

    Every chunk's part must be one the manifest commits (the part reader then finds each chunk's
    tensor in it, or raises ``missing_chunk``), and the chunks of every tensor must cover it exactly.
    """
    metadata_doc(path, doc)


def _check_at(path: str, s: dict[str, Any], part_size: Any) -> None:
    at = s.get("at")  # since 0.3: the chunk's bytes in its part
    if at is not None and not (isinstance(at, list) and len(at) == 2 and all(type(n) is int for n in at)
                               and 0 <= at[0] <= at[1] <= (part_size or 0)):
        raise CorruptCheckpointError(f"{path}/{METADATA_FILE}: chunk {s['name']!r:.80} lies at {at!r}, outside "
                                     f"its part {s['file']}")


def _ints(value: Any) -> bool:
    return isinstance(value, list) and all(type(n) is int and n >= 0 for n in value)


def check_coverage(path: str, fqn: str, size: Any, chunks: Any) -> None:
    """The ``chunks`` ([offsets, sizes] each) of tensor ``fqn`` of global ``size`` tile it exactly:
    each inside its bounds, no two overlapping, their elements adding up to the tensor's (so no gap).

    Overlaps are looked for by a sweep along the dimension where the chunks have the most distinct
    start offsets (chunks sorted by their start there, each compared only with those still open
    across it): a row- or column-sharded tensor costs n log n whichever dimension it is sharded
    along (one chunk open at a time), a k-by-k block grid n k (k open at a time)."""
    def bad(why: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(f"{path}/{METADATA_FILE}: the saved chunks of {fqn} {why}; the "
                                      "checkpoint is damaged")
    if not _ints(size) or not isinstance(chunks, list):
        raise bad("have no valid size")
    if len(chunks) == 1 and chunks[0] == [[0] * len(size), size]:
        return  # one chunk, the whole tensor (every replicated tensor): nothing can overlap
    boxes = []
    for chunk in chunks:
        if not (isinstance(chunk, list) and len(chunk) == 2 and _ints(chunk[0]) and _ints(chunk[1])
                and len(chunk[0]) == len(chunk[1]) == len(size)):
            raise bad(f"include {chunk!r:.80}, not offsets and sizes of a {len(size)}-dimensional tensor")
        offsets, sizes = chunk
        if any(o + s > n for o, s, n in zip(offsets, sizes, size, strict=True)):
            raise bad(f"include one at {offsets} of size {sizes}, outside its size {size}")
        if math.prod(sizes):
            boxes.append((offsets, [o + s for o, s in zip(offsets, sizes, strict=True)]))
    covered = sum(math.prod(e - o for o, e in zip(b, end, strict=True)) for b, end in boxes)
    if covered != math.prod(size):
        raise bad(f"cover {covered} of its {math.prod(size)} elements; a shard is missing")
    _no_overlap(boxes, bad)


def _no_overlap(boxes: list[tuple[list[int], list[int]]], bad: Callable[[str], CorruptCheckpointError]) -> None:
    """Raise ``bad`` when two of ``boxes`` ([begin, end) per dimension, all non-empty) overlap."""
    if not boxes or not boxes[0][0]:
        return  # 0-d tensors have one chunk, nothing to compare
    dims = len(boxes[0][0])
    axis = max(range(dims), key=lambda d: len({b[0][d] for b in boxes}))
    open_boxes: list[tuple[int, int, tuple[list[int], list[int]]]] = []  # heap of (end on axis, i, box)
    for i, (begin, end) in enumerate(sorted(boxes, key=lambda box: box[0][axis])):
        while open_boxes and open_boxes[0][0] <= begin[axis]:
            heapq.heappop(open_boxes)  # ends before this one begins along the axis: cannot overlap it
        for _, _, (o_begin, o_end) in open_boxes:
            if all(o < e2 and o2 < e for o, e, o2, e2 in zip(begin, end, o_begin, o_end, strict=True)):
                raise bad(f"overlap (at {begin} and {o_begin}): some elements come from no chunk")
        heapq.heappush(open_boxes, (end[axis], i, (begin, end)))


def missing_chunk(path: str, name: str, file: str) -> CorruptCheckpointError:
    """The error for a chunk the metadata places in a part that does not hold it."""
    return CorruptCheckpointError(f"{path}: the metadata puts chunk {name!r} in {file}, "
                                  "which the committed parts do not hold; a shard is missing")


def logical_tensors(path: str, doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Each saved tensor at its global size (name, dtype, shape, chunks), from the DCP metadata."""
    meta = metadata_doc(path, doc)
    rows = []
    for fqn, md in meta["state_dict_metadata"].items():
        if md.get("bytes"):
            rows.append({"name": fqn, "dtype": "bytes", "shape": [], "chunks": 1})
            continue
        rows.append({"name": fqn, "dtype": str(md["dtype"]).removeprefix("torch."), "shape": md["size"],
                     "chunks": len(md["chunks"])})
    return rows
