"""DCP's checkpoint ``Metadata`` <-> JSON, so a sharded checkpoint holds no pickle of its own.

DCP pickles its ``.metadata``; torchresume writes the same facts as JSON
(``dcp_metadata.json``): every logical tensor's dtype, global size and saved
chunks, the planner's key paths, and where each chunk lives (part file and
tensor name). ``Location`` is the per-item storage record the writer returns.
Version 2: a non-tensor value (``"value": true`` in its storage record) is typed JSON
in its part's header, not DCP's pickle; version 1 files (pickled values) still read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)

from torchresume.errors import CorruptCheckpointError
from torchresume.files.sharded import METADATA_FILE as FILE
from torchresume.files.sharded import check_metadata_schema
from torchresume.format import native

FORMAT = "torchresume-dcp-metadata"
VERSION = 2


@dataclass(frozen=True)
class Location:
    """Where one saved chunk lives: the part file and the tensor's name in it; since torchresume 0.3
    (unreleased) also its bytes ``at`` = [begin, end) in the unencrypted part file and their xxh3-64
    (hex), so a restore reads only those bytes (None in checkpoints written before)."""

    file: str
    name: str
    at: tuple[int, int] | None = None
    xxh3: str | None = None
    value: bool = False  # version 2: a non-tensor value, typed JSON in the part's skeleton (no bytes, no ``at``)


def _torch_attr(text: str, where: str) -> Any:
    value = getattr(torch, text.removeprefix("torch."), None)
    if value is None:
        raise CorruptCheckpointError(f"{where}: unknown torch attribute {text!r} in {FILE}")
    return value


def _encode_item(md: Any) -> dict[str, Any]:
    if isinstance(md, BytesStorageMetadata):
        return {"bytes": True}
    p = md.properties
    return {"dtype": str(p.dtype), "layout": str(p.layout), "requires_grad": p.requires_grad,
            "memory_format": str(p.memory_format), "size": list(md.size),
            "chunks": [[list(c.offsets), list(c.sizes)] for c in md.chunks]}


def _decode_item(doc: dict[str, Any], where: str) -> Any:
    if doc.get("bytes"):
        return BytesStorageMetadata()
    props = TensorProperties(dtype=_torch_attr(doc["dtype"], where), layout=_torch_attr(doc["layout"], where),
                             requires_grad=bool(doc["requires_grad"]),
                             memory_format=_torch_attr(doc["memory_format"], where))
    chunks = [ChunkStorageMetadata(torch.Size(o), torch.Size(s)) for o, s in doc["chunks"]]
    return TensorStorageMetadata(props, torch.Size(doc["size"]), chunks)


def _encode_planner_data(data: Any) -> dict[str, list[Any]] | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise TypeError(f"planner_data of type {type(data).__name__} cannot be stored; use DCP's "
                        "DefaultSavePlanner (torchresume stores its key paths as JSON)")
    return {k: list(v) for k, v in data.items()}


def _location(s: dict[str, Any]) -> Location:
    at = s.get("at")
    if s.get("value") is True:
        return Location(s["file"], s["name"], value=True)
    if at is None:
        return Location(s["file"], s["name"])
    begin, end = (int(n) for n in at)
    if not 0 <= begin <= end or not isinstance(s["xxh3"], str):
        raise TypeError(f"bad byte range {at!r} of {s['name']!r}")
    return Location(s["file"], s["name"], (begin, end), s["xxh3"])


def encode(md: Metadata, locations: dict[MetadataIndex, Location]) -> bytes:
    """The JSON bytes of ``md`` with ``locations`` as its storage data."""
    storage = [{"fqn": i.fqn, "offset": None if i.offset is None else list(i.offset), "index": i.index,
                "file": loc.file, "name": loc.name, **({"value": True} if loc.value else {}),
                **({} if loc.at is None else {"at": list(loc.at), "xxh3": loc.xxh3})} for i, loc in locations.items()]
    sm = md.storage_meta
    doc = {"format": FORMAT, "version": VERSION, "dcp_version": md.version,
           "state_dict_metadata": {k: _encode_item(v) for k, v in md.state_dict_metadata.items()},
           "planner_data": _encode_planner_data(md.planner_data), "storage_data": storage,
           "storage_meta": None if sm is None else {"checkpoint_id": str(sm.checkpoint_id), "save_id": sm.save_id}}
    return json.dumps(doc, separators=(",", ":")).encode()


def decode(raw: bytes, where: str) -> Metadata:
    """The DCP Metadata stored in ``raw``; CorruptCheckpointError when it is not ours or is damaged."""
    doc = native.loads(raw, where, "the DCP metadata")
    check_metadata_schema(where, doc)
    return decode_doc(doc, where)


def decode_doc(doc: Any, where: str) -> Metadata:
    """The DCP Metadata of the parsed metadata file ``doc``."""
    try:
        if not isinstance(doc, dict):
            raise TypeError("not a JSON object")
        if doc.get("format") != FORMAT:
            raise CorruptCheckpointError(f"{where}: not a torchresume DCP metadata file")
        if doc.get("version", 0) > VERSION:
            raise CorruptCheckpointError(f"{where}: metadata version {doc['version']} is newer than this "
                                         f"torchresume reads ({VERSION}): upgrade torchresume")
        sdm = {k: _decode_item(v, where) for k, v in doc["state_dict_metadata"].items()}
        planner = doc["planner_data"]
        planner_data = None if planner is None else {k: tuple(v) for k, v in planner.items()}
        storage = {MetadataIndex(s["fqn"], None if s["offset"] is None else torch.Size(s["offset"]), s["index"]):
                   _location(s) for s in doc["storage_data"]}
        sm = doc.get("storage_meta")
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        if isinstance(exc, CorruptCheckpointError):
            raise
        raise CorruptCheckpointError(f"{where}: damaged DCP metadata ({type(exc).__name__}: {exc})") from None
    meta = None if sm is None else StorageMeta(checkpoint_id=sm.get("checkpoint_id"), save_id=sm.get("save_id"))
    return Metadata(state_dict_metadata=sdm, planner_data=planner_data, storage_data=storage,
                    storage_meta=meta, version=doc.get("dcp_version"))
