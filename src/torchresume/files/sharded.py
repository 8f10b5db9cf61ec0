"""The on-disk checks of a sharded (torch.distributed) directory checkpoint, without torch.distributed.

A sharded checkpoint is a directory checkpoint whose manifest ``info.layout``
is ``torchresume-dcp``: besides the parts it holds ``dcp_metadata.json`` (DCP's
metadata as JSON, its size and xxh3 recorded in the manifest). ``check`` makes
sure that file is the one committed, that every chunk it names lies in a
committed part, and that the chunks of every tensor cover it exactly.
"""

from __future__ import annotations

import json
import math
from typing import Any

import xxhash

from torchresume.errors import CorruptCheckpointError
from torchresume.storage import resolve

LAYOUT = "torchresume-dcp"
METADATA_FILE = "dcp_metadata.json"


def is_sharded(doc: dict[str, Any]) -> bool:
    """True for the manifest ``doc`` of a sharded checkpoint."""
    info = doc.get("info")
    return isinstance(info, dict) and info.get("layout") == LAYOUT


def read_metadata_json(path: str, doc: dict[str, Any]) -> bytes:
    """The bytes of ``dcp_metadata.json``, checked against the size and digest in the manifest."""
    rec = doc["info"].get("dcp_metadata")
    if not isinstance(rec, dict) or not isinstance(rec.get("file"), str):
        raise CorruptCheckpointError(f"{path}: the manifest of a sharded checkpoint names no DCP metadata file")
    storage, where = resolve(path)
    target = storage.join(where, rec["file"])
    if not storage.exists(target):
        raise CorruptCheckpointError(f"{path}/{rec['file']}: missing; the sharded checkpoint cannot be loaded")
    f, _ = storage.open_read(target)
    with f:
        raw = bytes(f.read())
    if len(raw) != rec.get("size") or xxhash.xxh3_64_hexdigest(raw) != rec.get("xxh3"):
        raise CorruptCheckpointError(f"{path}/{rec['file']}: does not match the size and digest in the "
                                     "manifest; the metadata file is damaged or was replaced")
    return raw


def check(path: str, doc: dict[str, Any]) -> None:
    """Raise CorruptCheckpointError unless the metadata matches the committed parts.

    Every chunk's part must be one the manifest commits (the part reader then finds each chunk's
    tensor in it, or raises ``missing_chunk``), and the chunks of every tensor must cover it.
    """
    try:
        meta = json.loads(read_metadata_json(path, doc))
        chunks_of = {k: v for k, v in meta["state_dict_metadata"].items() if not v.get("bytes")}
        storage_data = meta["storage_data"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        raise CorruptCheckpointError(f"{path}/{METADATA_FILE}: not valid DCP metadata") from None
    committed = {p.get("file"): p.get("size") for p in doc.get("parts", []) if isinstance(p, dict)}
    for s in storage_data:
        if s["file"] not in committed:
            raise missing_chunk(path, s["name"], s["file"])
        at = s.get("at")  # since 0.3: the chunk's bytes in its part
        if at is not None and not (isinstance(at, list) and len(at) == 2 and all(type(n) is int for n in at)
                                   and 0 <= at[0] <= at[1] <= (committed[s["file"]] or 0)):
            raise CorruptCheckpointError(f"{path}/{METADATA_FILE}: chunk {s['name']!r} lies at {at!r}, outside "
                                         f"its part {s['file']}")
    for fqn, md in chunks_of.items():
        covered = sum(math.prod(sizes) for _, sizes in md["chunks"])
        if covered != math.prod(md["size"]):
            raise CorruptCheckpointError(f"{path}: the saved chunks of {fqn} cover {covered} of its "
                                         f"{math.prod(md['size'])} elements; a shard is missing")


def missing_chunk(path: str, name: str, file: str) -> CorruptCheckpointError:
    """The error for a chunk the metadata places in a part that does not hold it."""
    return CorruptCheckpointError(f"{path}: the metadata puts chunk {name!r} in {file}, "
                                  "which the committed parts do not hold; a shard is missing")


def logical_tensors(path: str, doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Each saved tensor at its global size (name, dtype, shape, chunks), from the DCP metadata."""
    meta = json.loads(read_metadata_json(path, doc))
    rows = []
    for fqn, md in meta["state_dict_metadata"].items():
        if md.get("bytes"):
            rows.append({"name": fqn, "dtype": "bytes", "shape": [], "chunks": 1})
            continue
        rows.append({"name": fqn, "dtype": md["dtype"].removeprefix("torch."), "shape": md["size"],
                     "chunks": len(md["chunks"])})
    return rows
