"""Directory checkpoints: several native part files, committed by a manifest written last.

    {prefix}-{epoch}_{step}.ckpt/
        <part>.safetensors ...     written in any order, by any process (one per rank)
        manifest.json              written last: the commit

Until ``manifest.json`` is committed the directory is not a checkpoint: it is
never listed, resumed from or counted by retention. The manifest names every
part with its size and the xxh3-64 of its header (which holds the checksum of
every tensor), so a missing, swapped or damaged part is caught; reading merges
the parts' trees (their top-level keys must not collide). Deleting removes the
manifest first, so a half-deleted directory is never taken for a checkpoint.
"""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import xxhash

from torchresume.errors import CheckpointNotFoundError, CorruptCheckpointError, TorchResumeError
from torchresume.files import seal, sharded
from torchresume.files.encoding import Description, encode_state, scalars, tensor_rows, write_encoded
from torchresume.format import native, reader
from torchresume.format.reader import Checkpoint
from torchresume.storage import confine, resolve
from torchresume.storage.base import write_all
from torchresume.storage.json_text import loads
from torchresume.storage.local import LocalStorage

MANIFEST = "manifest.json"
LAYOUT = "torchresume-directory"
VERSION = seal.SEALED_VERSION  # 2: sealed (files/seal.py); version 1 manifests read with one warning
PART_SUFFIX = ".safetensors"
MAX_MANIFEST_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class PartRecord:
    """What the coordinator needs to know about one committed part file."""

    file: str
    size: int
    header_xxh3: str
    encrypted: bool = False


def write_part(directory: str, name: str, kind: str, tree: Any, *, info: dict[str, Any] | None = None,
               enc_key: bytes | None = None, spans: dict[str, Span] | None = None) -> PartRecord:
    """Write one part file (``name`` + .safetensors) into ``directory``; returns its record.

    ``spans``: filled with each tensor's bytes in the (unencrypted) file and their xxh3 (``tensor_spans``).
    """
    if "/" in name or not name:
        raise ValueError(f"part name must be a non-empty file name without '/', got {name!r}")
    storage, _ = resolve(directory)
    encoded = encode_state(kind, tree, info=info)
    if spans is not None:
        spans.update(tensor_spans(encoded))
    file = name + PART_SUFFIX
    size = write_encoded(encoded, storage.join(directory, file), enc_key)
    return PartRecord(file, size, xxhash.xxh3_64_hexdigest(encoded.header), enc_key is not None)


# A tensor's bytes in a part file: [begin, end) from the start of the file, and their xxh3-64 (int).
Span = tuple[int, int, int]


def tensor_spans(encoded: native.Encoded) -> dict[str, Span]:
    """Where each tensor of ``encoded`` lies in the file written from it (unencrypted), with its digest."""
    header = native.read_header(io.BytesIO(encoded.header), encoded.size, "a part being written")
    digests = header.meta["checksums"]["tensors"] if header.meta else {}
    return {e.name: (header.data_start + e.begin, header.data_start + e.end, int(digests[e.name], 16))
            for e in header.entries}


def commit_directory(directory: str, parts: list[PartRecord], *, info: dict[str, Any] | None = None,
                     append: dict[str, Any] | None = None, enc_key: bytes | None = None) -> None:
    """Write the manifest, sealed (``files/seal.py``: its digest, and with ``enc_key`` its HMAC): the
    directory becomes a checkpoint. Call after every part is written.

    ``enc_key``: the key the parts were encrypted with (required when they were: the HMAC is what
    keeps someone without the key from changing the manifest)."""
    if not parts:
        raise ValueError("a directory checkpoint needs at least one part")
    if enc_key is None and any(p.encrypted for p in parts):
        raise ValueError("the parts are encrypted: pass their enc_key to commit_directory, so the manifest is "
                         "sealed with it")
    names = [p.file for p in parts]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate part files in {names}")
    storage, where = resolve(directory)
    target = storage.join(where, MANIFEST)
    manifest = {"format": LAYOUT, "version": VERSION, "time": time.time(),
                "info": {"time": time.time(), **(info or {})}, "append": append or {},
                "parts": [asdict(p) for p in parts]}
    manifest = seal.sealer(enc_key)(manifest)
    data = json.dumps(manifest, indent=1).encode()
    storage.retrying(f"commit of {directory}", lambda: write_all(storage, target, [data]))


def read_manifest(path: str) -> dict[str, Any]:
    """The committed manifest of directory ``path``, its schema checked; CheckpointNotFoundError if uncommitted.

    Every later reader trusts what this returns: each part a record with a confined file name
    (storage/confine.py), an int size and a header digest. Anything else is a CorruptCheckpointError
    (``UnsafePathError`` for a name leading outside) naming the manifest, before any part is opened.
    """
    storage, where = resolve(path)
    target = storage.join(where, MANIFEST)
    # Local files are renamed into place once complete: present is committed (the digest would read
    # the whole manifest once more); present without following a link (a link, even to itself, is
    # refused as one by ``open_member``). Object storage: committed once its marker is (``digest``).
    if isinstance(storage, LocalStorage):
        present = os.path.lexists(target)
    else:
        present = storage.stat(target) is not None and storage.digest(target) is not None
    if not present:
        raise CheckpointNotFoundError(f"{path}: a directory without a committed {MANIFEST}; "
                                      "it is not a checkpoint (a save that did not finish?)")
    f, size = confine.open_member(storage, where, MANIFEST, path)
    with f:
        if size > MAX_MANIFEST_BYTES:  # checked before reading: a manifest is a few KiB per part
            raise CorruptCheckpointError(f"{path}/{MANIFEST}: {size} bytes, more than a manifest holds "
                                         f"({MAX_MANIFEST_BYTES}); the manifest is damaged")
        raw = f.read(size)
    doc = loads(raw, f"{path}/{MANIFEST}", "the manifest")  # syntax, encoding, depth, long numbers: typed
    check_manifest(path, doc)
    return doc


def check_manifest(path: str, doc: Any) -> None:
    """The manifest's schema, checked once for every reader: CorruptCheckpointError naming the fault."""
    where = f"{path}/{MANIFEST}"
    if not isinstance(doc, dict) or doc.get("format") != LAYOUT or not isinstance(doc.get("parts"), list):
        raise CorruptCheckpointError(f"{where}: not a torchresume manifest")
    if type(doc.get("version")) is not int or not 1 <= doc["version"] <= VERSION:
        raise CorruptCheckpointError(f"{where}: version {doc.get('version')!r:.40} is newer than "
                                     f"this torchresume reads ({VERSION}): upgrade torchresume")
    for key in ("info", "append"):
        if not isinstance(doc.get(key, {}), dict):
            raise CorruptCheckpointError(f"{where}: {key!r} is not a JSON object; the manifest is damaged")
    if not doc["parts"]:
        raise CorruptCheckpointError(f"{where}: names no part files; the manifest is damaged")
    seen: set[str] = set()
    for i, part in enumerate(doc["parts"]):
        if not isinstance(part, dict):
            raise CorruptCheckpointError(f"{where}: part {i} is {part!r:.40}, not a record; the manifest is damaged")
        name = confine.check_name(part.get("file"), where)
        size, digest = part.get("size"), part.get("header_xxh3")
        bad = ("size" if type(size) is not int or size < 0 else
               "header_xxh3" if not isinstance(digest, str) else
               "encrypted" if not isinstance(part.get("encrypted", False), bool) else
               "file" if name in seen else "")
        if bad:
            raise CorruptCheckpointError(f"{where}: part {name!r} has {'a duplicate' if bad == 'file' else 'no valid'} "
                                         f"{bad!r}; the manifest is damaged")
        seen.add(name)
    seal.check(path, doc)  # its digest: every reader of a directory checkpoint passes here
    if sharded.is_sharded(doc):
        sharded.check_manifest(path, doc)  # its other names: every sharded reader passes here


def is_committed(path: str) -> bool:
    try:
        read_manifest(path)
    except (TorchResumeError, OSError):
        return False
    return True


def _part_header(storage: Any, path: str, part: dict[str, Any], where: str) -> Any:
    f, size = confine.open_member(storage, where, part["file"], path, header_only=True)
    with f:
        if size != part["size"]:
            raise CorruptCheckpointError(f"{path}: {part['file']} is {size} bytes, the manifest says "
                                         f"{part['size']}; the part is damaged or was replaced")
        return reader.read_header(f, size, f"{path}/{part['file']}")


def read(path: str, *, dec_key: bytes | None = None, verify: bool = True) -> Checkpoint:
    """Every part of directory checkpoint ``path``, checked against the manifest, as one tree.

    A sharded (torch.distributed) checkpoint is read by ``single.read_checkpoint`` (consolidated,
    laid out as a one-process file), not here.
    """
    doc = read_manifest(path)
    if sharded.is_sharded(doc):
        raise CorruptCheckpointError(f"{path}: a sharded checkpoint; read it with read_checkpoint")
    seal.authenticate(path, doc, dec_key)
    storage, where = resolve(path)
    tree: dict[str, Any] = {}
    kinds = set()
    encrypted = False
    for part in doc["parts"]:
        f, size = confine.open_member(storage, where, part["file"], path)
        with f:
            if size != part["size"]:
                raise CorruptCheckpointError(f"{path}: {part['file']} is {size} bytes, the manifest says "
                                             f"{part['size']}; the part is damaged or was replaced")
            ckpt = reader.read(f, size, f"{path}/{part['file']}", dec_key=dec_key, verify=verify,
                               header_xxh3=part["header_xxh3"])
        if ckpt.encrypted != bool(part.get("encrypted")):  # the record's flag decides nothing, but must be true
            raise CorruptCheckpointError(f"{path}: part {part['file']} is {'' if ckpt.encrypted else 'not '}"
                                         "encrypted, its manifest record says otherwise; the manifest was changed")
        if "sharded_version" in ckpt.info:  # a manifest that lost its sharded layout
            raise CorruptCheckpointError(f"{path}: part {part['file']} is a sharded checkpoint's rank part, but "
                                         "the manifest does not say the layout is sharded; the manifest was changed")
        encrypted = encrypted or ckpt.encrypted
        kinds.add(ckpt.kind)
        if not isinstance(ckpt.tree, dict):
            raise CorruptCheckpointError(f"{path}: part {part['file']} does not hold a dict")
        clash = set(tree) & set(ckpt.tree)
        if clash:
            raise CorruptCheckpointError(f"{path}: parts hold the same keys {sorted(clash)[:5]}")
        tree.update(ckpt.tree)
    kind = kinds.pop() if len(kinds) == 1 else "train_state"
    meta = {"info": doc.get("info", {}), "append": doc.get("append", {})}
    return Checkpoint(kind, tree, "torchresume-directory", meta, encrypted)


def describe(path: str) -> Any:
    """Header-level description of every part (reads the manifest and each part's header)."""
    doc = read_manifest(path)
    storage, where = resolve(path)
    desc = Description(path, sum(int(p["size"]) for p in doc["parts"]), "torchresume-directory",
                       info=dict(doc.get("info", {})), append=dict(doc.get("append", {})),
                       files=[p["file"] for p in doc["parts"]])
    kinds = set()
    for part in doc["parts"]:
        if part.get("encrypted"):
            desc.encrypted = True
            continue
        _, header, _ = _part_header(storage, path, part, where)
        if header is None or header.meta is None:
            continue
        kinds.add(header.kind)
        desc.tensors += tensor_rows(header)
        desc.values.update(scalars(header.meta.get("skeleton")))
    desc.kind = kinds.pop() if len(kinds) == 1 else "train_state" if kinds else "encrypted"
    return desc


def delete(path: str) -> None:
    """Uncommit (manifest first), then remove the parts and the directory.

    A symbolic link in its place is removed itself: its target (another run's checkpoint, say) is
    never uncommitted.
    """
    storage, where = resolve(path)
    if isinstance(storage, LocalStorage) and os.path.islink(where):
        storage.delete(where)
        return
    storage.delete(storage.join(where, MANIFEST))
    storage.delete(where)


__all__ = ["MANIFEST", "PartRecord", "commit_directory", "delete", "describe", "is_committed", "read",
           "read_manifest", "write_part"]
