"""The on-disk checks of a sharded (torch.distributed) directory checkpoint, without torch.distributed.

A sharded checkpoint is a directory checkpoint whose manifest ``info.layout``
is ``torchresume-dcp``: besides the parts it holds ``dcp_metadata.json`` (DCP's
metadata as JSON, its size and xxh3 recorded in the manifest). This module owns
what a reader checks before it trusts any of it:

* ``check_manifest``: every file name the manifest gives (parts, rank parts, the
  metadata file) is a plain name inside the checkpoint, and the manifest's digest
  (format version 2) matches its canonical JSON; a manifest written before the
  digest is read with one warning line saying it carries none.
* ``authenticate``: with the key of an encrypted checkpoint, the manifest's
  HMAC-SHA256 (a key check first tells a wrong key from a changed manifest).
* ``metadata_doc``/``check``: ``dcp_metadata.json`` is the one committed, every
  chunk it names lies in a committed part, and the chunks of every tensor cover
  it exactly (inside its bounds, no overlap, no gap).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Callable
from typing import Any

import xxhash

from torchresume.errors import CorruptCheckpointError, DecryptionError
from torchresume.log import log
from torchresume.storage import confine, resolve

LAYOUT = "torchresume-dcp"
METADATA_FILE = "dcp_metadata.json"
# Manifest version of a sharded checkpoint since its manifest carries a digest and its non-tensor
# values are typed JSON (version 1: neither).
VERSION = 2
DIGEST = "digest"
_HMAC_LABEL = b"torchresume sharded manifest v2"
_KEY_CHECK_LABEL = b"torchresume sharded key check v2"
_warned: set[str] = set()  # checkpoints already said to carry no digest (one line each per process)


def is_sharded(doc: dict[str, Any]) -> bool:
    """True for the manifest ``doc`` of a sharded checkpoint."""
    info = doc.get("info")
    return isinstance(info, dict) and info.get("layout") == LAYOUT


def check_name(path: str, name: Any, what: str, source: str = "manifest.json") -> str:
    """``name`` (the ``what`` that ``source`` of checkpoint ``path`` names) when it is a plain file name
    inside the checkpoint; else UnsafePathError naming it (``storage/confine.py``, the one check)."""
    return confine.check_name(name, f"{path}/{source} ({what})")


def canonical(doc: dict[str, Any]) -> bytes:
    """The bytes the manifest digest covers: ``doc`` without its digest, keys sorted, no spaces."""
    body = {k: v for k, v in doc.items() if k != DIGEST}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _hmac_key(key: bytes) -> bytes:
    return hmac.new(key, _HMAC_LABEL, hashlib.sha256).digest()


def key_check(key: bytes) -> str:
    """16 hex digits that tell a wrong key from a changed manifest (a MAC of a constant, not the key)."""
    return hmac.new(key, _KEY_CHECK_LABEL, hashlib.sha256).hexdigest()[:16]


def sealer(enc_key: bytes | None) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """What the writer applies to a sharded manifest before committing it: version 2 and its digest
    (xxh3-64 of ``canonical``; with ``enc_key`` also the HMAC-SHA256 and the key check)."""
    def seal(manifest: dict[str, Any]) -> dict[str, Any]:
        doc = {**manifest, "version": VERSION}
        body = canonical(doc)
        digest = {"xxh3": xxhash.xxh3_64_hexdigest(body)}
        if enc_key is not None:
            digest["key_check"] = key_check(enc_key)
            digest["hmac_sha256"] = hmac.new(_hmac_key(enc_key), body, hashlib.sha256).hexdigest()
        return {**doc, DIGEST: digest}
    return seal


def check_manifest(path: str, doc: dict[str, Any]) -> None:
    """Raise CorruptCheckpointError unless the sharded manifest ``doc`` (its parts already checked by
    ``directory.check_manifest``) names only files inside the checkpoint and matches its digest; a
    version 1 manifest (no digest) is said once, then read."""
    info = doc["info"]
    rank_parts = info.get("rank_parts")
    if not isinstance(rank_parts, list):
        raise CorruptCheckpointError(f"{path}: the manifest of a sharded checkpoint lists no rank parts")
    for name in rank_parts:
        check_name(path, name, "rank part")
    rec = info.get("dcp_metadata")
    if not isinstance(rec, dict):
        raise CorruptCheckpointError(f"{path}: the manifest of a sharded checkpoint names no DCP metadata file")
    check_name(path, rec.get("file"), "dcp_metadata.file")
    digest = doc.get(DIGEST)
    if digest is None and doc.get("version") == 1:
        if path not in _warned:
            _warned.add(path)
            log.warning("%s carries no manifest digest (written before torchresume 0.3): its step, epoch and "
                        "part list are not checked; save again to protect them", path)
        return
    if not isinstance(digest, dict) or not isinstance(digest.get("xxh3"), str):
        raise CorruptCheckpointError(f"{path}/manifest.json: version {doc.get('version')!r} without its digest; "
                                     "the manifest is damaged or was changed")
    if xxhash.xxh3_64_hexdigest(canonical(doc)) != digest["xxh3"]:
        raise CorruptCheckpointError(f"{path}/manifest.json: does not match its digest; the manifest "
                                     "(step, epoch, info or part list) is damaged or was changed")


def authenticate(path: str, doc: dict[str, Any], key: bytes | None) -> None:
    """With ``key``, check the HMAC of an encrypted sharded manifest ``doc`` (after ``check_manifest``).

    A wrong key is a DecryptionError (the key check); a manifest changed by someone without the key
    a CorruptCheckpointError. A version 1 manifest has none (said by ``check_manifest``)."""
    if key is None or not any(isinstance(p, dict) and p.get("encrypted") for p in doc["parts"]):
        return
    digest = doc.get(DIGEST)
    if digest is None and doc.get("version") == 1:
        return
    if not isinstance(digest, dict) or not isinstance(digest.get("hmac_sha256"), str):
        raise CorruptCheckpointError(f"{path}/manifest.json: an encrypted sharded checkpoint without its "
                                     "manifest's HMAC; the manifest was changed")
    if digest.get("key_check") != key_check(key):
        raise DecryptionError(f"{path}: decryption failed: the key is wrong (it is not the one this sharded "
                              "checkpoint was encrypted with)")
    expected = hmac.new(_hmac_key(key), canonical(doc), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, digest["hmac_sha256"]):
        raise CorruptCheckpointError(f"{path}/manifest.json: does not authenticate with the checkpoint's key; "
                                     "the manifest (step, epoch, info or part list) was changed")


def read_metadata_json(path: str, doc: dict[str, Any]) -> bytes:
    """The bytes of ``dcp_metadata.json``, checked against the size and digest in the manifest."""
    rec = doc["info"].get("dcp_metadata")
    if not isinstance(rec, dict):
        raise CorruptCheckpointError(f"{path}: the manifest of a sharded checkpoint names no DCP metadata file")
    name = check_name(path, rec.get("file"), "dcp_metadata.file")
    storage, where = resolve(path)
    size = rec.get("size")
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
    """``dcp_metadata.json`` parsed and checked against the manifest ``doc`` (``check``)."""
    try:
        meta = json.loads(read_metadata_json(path, doc))
        chunks_of = {k: v for k, v in meta["state_dict_metadata"].items() if not v.get("bytes")}
        storage_data = meta["storage_data"]
        committed = {p["file"]: p.get("size") for p in doc["parts"]}
        for s in storage_data:
            check_name(path, s["file"], "chunk file", METADATA_FILE)
            if s["file"] not in committed:
                raise missing_chunk(path, s["name"], s["file"])
            _check_at(path, s, committed[s["file"]])
        for fqn, md in chunks_of.items():
            check_coverage(path, fqn, md["size"], md["chunks"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError, ValueError) as exc:
        if isinstance(exc, CorruptCheckpointError):
            raise
        raise CorruptCheckpointError(f"{path}/{METADATA_FILE}: not valid DCP metadata") from None
    return meta


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
        raise CorruptCheckpointError(f"{path}/{METADATA_FILE}: chunk {s['name']!r} lies at {at!r}, outside "
                                     f"its part {s['file']}")


def _ints(value: Any) -> bool:
    return isinstance(value, list) and all(type(n) is int and n >= 0 for n in value)


def check_coverage(path: str, fqn: str, size: Any, chunks: Any) -> None:
    """The ``chunks`` ([offsets, sizes] each) of tensor ``fqn`` of global ``size`` tile it exactly:
    each inside its bounds, no two overlapping, their elements adding up to the tensor's (so no gap).

    Overlaps are looked for along the first dimension (chunks sorted by their start there, each
    compared with those still open), so row- or column-sharded tensors cost n log n."""
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
            raise bad(f"include {chunk!r}, not offsets and sizes of a {len(size)}-dimensional tensor")
        offsets, sizes = chunk
        if any(o + s > n for o, s, n in zip(offsets, sizes, size, strict=True)):
            raise bad(f"include one at {offsets} of size {sizes}, outside its size {size}")
        if math.prod(sizes):
            boxes.append((offsets, [o + s for o, s in zip(offsets, sizes, strict=True)]))
    covered = sum(math.prod(e - o for o, e in zip(b, end, strict=True)) for b, end in boxes)
    if covered != math.prod(size):
        raise bad(f"cover {covered} of its {math.prod(size)} elements; a shard is missing")
    open_boxes: list[tuple[list[int], list[int]]] = []
    for begin, end in sorted(boxes, key=lambda box: box[0]):
        if begin:  # 0-d tensors have one chunk, nothing to compare
            open_boxes = [b for b in open_boxes if b[1][0] > begin[0]]
        for other in open_boxes:
            if all(o < e2 and o2 < e for o, e, o2, e2 in zip(begin, end, other[0], other[1], strict=True)):
                raise bad(f"overlap (at {begin} and {other[0]}): some elements come from no chunk")
        open_boxes.append((begin, end))


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
