"""DCP StorageReader over a committed torchresume sharded checkpoint.

Reads the manifest (refusing an uncommitted directory), the JSON DCP metadata
(checked against the digest the manifest recorded), and for each planned read
only the part files that hold the wanted chunks, each checked against the
manifest's size. DCP's planner does the resharding. Where the metadata records each
chunk's byte range and xxh3 (checkpoints written since 0.3), only those bytes are read,
neighbours in one read, and each chunk is checked against its xxh3 (the metadata's digest is
in the manifest, so the chain of checks is manifest -> metadata -> chunk); otherwise, and for
encrypted parts, the whole part is read and checked against its header digest and per-tensor
checksums, as before.

A restore (``rank_part=True``) also reads, on each rank and inside DCP's read step (so a failure
is raised on every rank), that rank's own part: old rank r's for rank r, old rank 0's for a rank
the saving job did not have. ``RankStates`` reads any other old rank's part only when asked, in
the process that asks: no rank's part passes through another rank.
"""

from __future__ import annotations

import io
import math
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any, overload

import torch
import xxhash
from torch.distributed.checkpoint._traverse import set_element  # what DefaultLoadPlanner.load_bytes uses
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner, ReadItem
from torch.distributed.checkpoint.storage import StorageReader
from torch.futures import Future

from torchresume.errors import CheckpointNotFoundError, CorruptCheckpointError, TorchResumeError
from torchresume.files import dcp_metadata as dcp_json
from torchresume.files import directory, seal, sharded
from torchresume.format import checksum, native, reader
from torchresume.state.tree import unflatten
from torchresume.storage import confine, resolve


def sharded_manifest(path: str, dec_key: bytes | None = None) -> dict[str, Any]:
    """The committed manifest of sharded checkpoint ``path``, its names and digest checked (with
    ``dec_key`` also its HMAC); CorruptCheckpointError if it is not one or does not check."""
    try:
        doc = directory.read_manifest(path)
    except CheckpointNotFoundError as exc:  # committed once (listed), its manifest gone: damage
        raise CorruptCheckpointError(str(exc)) from None
    if not sharded.is_sharded(doc):
        raise CorruptCheckpointError(f"{path}: a directory checkpoint but not a sharded (torch.distributed) "
                                     "one; load it with torchresume.load_checkpoint")
    seal.authenticate(path, doc, dec_key)
    return doc


def is_sharded(path: str) -> bool:
    """True when ``path`` is a committed directory checkpoint written by the distributed manager."""
    try:
        return sharded.is_sharded(directory.read_manifest(path))
    except (OSError, ValueError):
        return False


def load_metadata(path: str, doc: dict[str, Any]) -> Metadata:
    """The DCP metadata of ``path``, checked against manifest ``doc`` (digest, chunk files, coverage)."""
    return dcp_json.decode_doc(sharded.metadata_doc(path, doc), f"{path}/{sharded.METADATA_FILE}")


def _open_part(path: str, part: dict[str, Any], *, header: bool = False) -> tuple[Any, int]:
    """Part ``part`` of ``path`` opened for reading, its size checked against the manifest's; a part
    that is gone is damage (CorruptCheckpointError), as a changed one is."""
    storage, where = resolve(path)
    file = part.get("file")
    try:
        f, size = confine.open_member(storage, where, file, path, header_only=header)
    except FileNotFoundError:
        raise CorruptCheckpointError(f"{path}: part {file} is missing; the checkpoint is damaged") from None
    if size != part.get("size"):
        f.close()
        raise CorruptCheckpointError(f"{path}: {file} is {size} bytes, the manifest says "
                                     f"{part.get('size')}; the part is damaged or was replaced")
    return f, size


def read_part(path: str, part: dict[str, Any], *, verify: bool = True,
              dec_key: bytes | None = None) -> dict[str, Any]:
    """The tree of one part file, checked against its manifest record (decrypted with ``dec_key``)."""
    return _read_checkpoint(path, part, verify=verify, dec_key=dec_key).tree


def _read_checkpoint(path: str, part: dict[str, Any], *, verify: bool, dec_key: bytes | None) -> Any:
    f, size = _open_part(path, part)
    with f:
        ckpt = reader.read(f, size, f"{path}/{part['file']}", dec_key=dec_key, verify=verify,
                           header_xxh3=part["header_xxh3"])
    if ckpt.encrypted != bool(part.get("encrypted")):  # the record's flag is what decides the HMAC check
        raise CorruptCheckpointError(f"{path}: part {part['file']} is {'' if ckpt.encrypted else 'not '}"
                                     "encrypted, its manifest record says otherwise; the manifest was changed")
    if not isinstance(ckpt.tree, dict):
        raise CorruptCheckpointError(f"{path}: part {part['file']} does not hold a dict")
    return ckpt


def part_header(path: str, part: dict[str, Any]) -> native.Header:
    """The header of one unencrypted part, read alone (one read) and checked against the manifest's
    digest of it before it is parsed: bytes ``[0, 8 + N)``, every tensor's checksum and the
    typed-JSON values among them."""
    f, size = _open_part(path, part, header=True)
    where = f"{path}/{part['file']}"
    with f:
        first = f.read(8)
        n = int.from_bytes(first, "little") if len(first) == 8 else -1
        if not 0 <= n <= min(size - 8, native.MAX_HEADER_BYTES):
            raise CorruptCheckpointError(f"{where}: the header's length is damaged; the part is damaged")
        raw = first + f.read(n)
    if xxhash.xxh3_64_hexdigest(raw) != part.get("header_xxh3"):
        raise CorruptCheckpointError(f"{where}: header differs from the one the manifest recorded; "
                                     "the part was replaced or damaged")
    header = native.read_header(io.BytesIO(raw), size, where)
    if header.meta is None:
        raise CorruptCheckpointError(f"{where}: not a torchresume part; the checkpoint is damaged")
    return header


def read_values(path: str, part: dict[str, Any], names: list[str]) -> dict[str, Any] | None:
    """The typed-JSON values ``names`` of one unencrypted part, from its header alone (checked
    against the manifest's header digest); None when one of them holds a tensor (read the part)."""
    if not names:
        return {}
    header = part_header(path, part)
    skeleton = header.meta.get("skeleton") if header.meta else None
    nodes = dict(skeleton["D"]) if isinstance(skeleton, dict) and isinstance(skeleton.get("D"), list) else {}
    out = {}
    for name in names:
        if name not in nodes:
            raise sharded.missing_chunk(path, name, part["file"])
        try:
            out[name] = unflatten(nodes[name], {})
        except KeyError:
            return None  # a value holding a tensor
        except (ValueError, TypeError) as exc:
            raise CorruptCheckpointError(f"{path}/{part['file']}: value {name!r} is damaged ({exc})") from None
    return out


def read_chunks(path: str, part: dict[str, Any], wanted: dict[str, tuple[tuple[int, int], str]], *,
                verify: bool = True, into: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The bytes of the named chunks of one unencrypted part (``wanted``: name -> ([begin, end), xxh3)),
    each checked against its xxh3; chunks that lie back to back are read at once. ``into``: chunks read
    straight into these contiguous CPU tensors of their byte size (no buffer, no copy), then checked."""
    into = into or {}
    file = f"{path}/{part['file']}"
    f, size = _open_part(path, part)
    out: dict[str, torch.Tensor] = {}
    with f:
        order = sorted(wanted.items(), key=lambda kv: kv[1][0])
        for name, ((b, e), digest) in order:
            if name in into:
                if not 0 <= b <= e <= size or into[name].nbytes != e - b:
                    raise CorruptCheckpointError(f"{file}: the metadata puts chunk {name!r} at bytes {b}-{e}, "
                                                 f"outside the {size}-byte part or not its size; the checkpoint is "
                                                 "damaged")
                out[name] = _checked(f, b, native.tensor_bytes(into[name]), name, digest if verify else None, file)
        order = [kv for kv in order if kv[0] not in into]
        i = 0
        while i < len(order):
            begin, end = order[i][1][0]
            j = i + 1
            while j < len(order) and order[j][1][0][0] == end:
                end = order[j][1][0][1]
                j += 1
            if not 0 <= begin <= end <= size:
                raise CorruptCheckpointError(f"{file}: the metadata puts chunk {order[i][0]!r} at bytes "
                                             f"{begin}-{end}, outside the {size}-byte part; the checkpoint is damaged")
            buf = torch.empty(end - begin, dtype=torch.uint8)
            _read_into(f, begin, native.tensor_bytes(buf), file)
            for name, ((b, e), digest) in order[i:j]:
                chunk = buf[b - begin:e - begin]
                if verify and checksum.digest(native.tensor_bytes(chunk)) != digest:
                    raise _mismatch(file, name)
                out[name] = chunk
            i = j
    return out


def _checked(f: Any, begin: int, view: memoryview, name: str, digest: str | None, where: str) -> Any:
    _read_into(f, begin, view, where)
    if digest is not None and checksum.digest(view) != digest:
        raise _mismatch(where, name)
    return view


def _mismatch(where: str, name: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"{where}: checksum mismatch in tensor {name!r}; the part is damaged")


def _read_into(f: Any, begin: int, view: memoryview, where: str) -> None:
    f.seek(begin)
    done = 0
    while done < len(view):
        n = f.readinto(view[done:])
        if not n:
            raise CorruptCheckpointError(f"{where}: truncated while reading bytes {begin}-{begin + len(view)}")
        done += n


def rank_key(rank: int) -> str:
    """The name of old rank ``rank``'s state inside its rank part."""
    return f"__rank_state_{rank:05d}"


def read_rank_state(path: str, doc: dict[str, Any], rank: int, *, dec_key: bytes | None = None,
                    verify: bool = True) -> Any:
    """Old rank ``rank``'s ``rank_state`` from its own part of checkpoint ``path`` (manifest ``doc``)."""
    file = sharded.check_name(path, doc["info"]["rank_parts"][rank], "rank part")
    parts = {p["file"]: p for p in doc["parts"]}
    if file not in parts:
        raise CorruptCheckpointError(f"{path}: the manifest names rank part {file} but does not list it; "
                                     "the checkpoint is damaged")
    ckpt = _read_checkpoint(path, parts[file], dec_key=dec_key, verify=verify)
    sharded.check_rank_info(path, file, doc, ckpt.info)
    return ckpt.tree.get(rank_key(rank))


class RankStates(Sequence[Any]):
    """Every saving rank's ``rank_state`` (index = old rank), each part read on first use by this process.

    ``known`` holds what was read already (this rank's own part, during the restore). Compares
    equal to a list of the same states (reading every part to compare).
    """

    def __init__(self, path: str, doc: dict[str, Any], *, dec_key: bytes | None = None,
                 known: dict[int, Any] | None = None) -> None:
        self.path, self.doc, self.dec_key = path, doc, dec_key
        self._states: dict[int, Any] = dict(known or {})

    @property
    def read(self) -> list[int]:
        """The old ranks whose part this process read, in order."""
        return sorted(self._states)

    def __len__(self) -> int:
        return len(self.doc["info"]["rank_parts"])

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        rank = range(len(self))[index]  # IndexError past the old world size
        if rank not in self._states:
            self._states[rank] = read_rank_state(self.path, self.doc, rank, dec_key=self.dec_key)
        return self._states[rank]

    def __iter__(self) -> Iterator[Any]:
        return (self[i] for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, (str, bytes)):
            return NotImplemented
        return list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RankStates({self.path!r}, {len(self)} ranks, read: {self.read})"


def narrow(tensor: torch.Tensor, offsets: Any, lengths: Any) -> torch.Tensor:
    for dim, (start, length) in enumerate(zip(offsets, lengths, strict=True)):
        tensor = torch.narrow(tensor, dim, int(start), int(length))
    return tensor


class PartReader(StorageReader):
    """Loads chunks from the part files of one committed sharded checkpoint."""

    def __init__(self, path: str, *, verify: bool = True, dec_key: bytes | None = None,
                 rank_part: bool = False, rank: int | None = None) -> None:
        super().__init__()
        self.path = path
        self.verify = verify
        self.dec_key = dec_key
        self.rank_part = rank_part
        self._given_rank = rank  # a load without DCP's collectives (no_dist) still reads its own part
        self.rank = rank or 0
        self.doc: dict[str, Any] = {}
        self.parts: dict[str, dict[str, Any]] = {}
        self.storage_data: dict[Any, dcp_json.Location] = {}
        self.chunk_types: dict[tuple[str, tuple[int, ...]], tuple[torch.dtype, tuple[int, ...]]] = {}
        self.own: dict[int, Any] = {}  # with rank_part: {old rank: its rank_state} read by this rank
        self._metadata: Metadata | None = None

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        if checkpoint_id and str(checkpoint_id) != self.path:
            self.path = str(checkpoint_id)
            self._metadata = None

    def prepare(self) -> Metadata:
        """Read and check the manifest (with the key: its HMAC) and the metadata. Call it before DCP's
        load: DCP swallows an error from ``read_metadata`` (an AssertionError 'metadata is None' and
        a logged traceback follow), so the typed error is raised here, where the restore sees it."""
        if self._metadata is None:
            self.doc = sharded_manifest(self.path, self.dec_key)
            self.parts = {p["file"]: p for p in self.doc["parts"]}
            self._metadata = load_metadata(self.path, self.doc)
        return self._metadata

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        return self.prepare()

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self.storage_data = metadata.storage_data
        self.chunk_types = {(fqn, tuple(c.offsets)): (md.properties.dtype, tuple(c.sizes))
                            for fqn, md in metadata.state_dict_metadata.items()
                            if isinstance(md, TensorStorageMetadata) for c in md.chunks}
        self.rank = self._given_rank if self._given_rank is not None else int(kwargs.get("rank") or 0)

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        per_file: dict[str, list[ReadItem]] = {}
        for item in plan.items:
            per_file.setdefault(self.storage_data[item.storage_index].file, []).append(item)
        for file, items in per_file.items():
            if file not in self.parts:
                raise CorruptCheckpointError(f"{self.path}: the metadata names part {file}, which the "
                                             "manifest does not list; the checkpoint is damaged")
            self._read_file(planner, file, items)
        if self.rank_part:
            old = self.rank if self.rank < len(self.doc["info"]["rank_parts"]) else 0  # no old part: rank 0's
            self.own = {old: read_rank_state(self.path, self.doc, old, dec_key=self.dec_key, verify=self.verify)}
        fut: Future[None] = Future()
        fut.set_result(None)
        return fut

    def _read_file(self, planner: LoadPlanner, file: str, items: list[ReadItem]) -> None:
        """Load ``items`` from part ``file``: from an unencrypted part only their chunks' bytes and
        (typed-JSON values) its header; else, or without byte ranges (before 0.3), the whole part."""
        part = self.parts[file]
        locations = [self.storage_data[item.storage_index] for item in items]
        if self.dec_key is None and not part.get("encrypted") and all(loc.at or loc.value for loc in locations):
            values = read_values(self.path, part, [loc.name for loc in locations if loc.value])
            if values is not None:
                once = Counter(loc.name for loc in locations)
                direct = {loc.name: target for item, loc in zip(items, locations, strict=True)
                          if once[loc.name] == 1 and (target := self._whole_target(planner, item)) is not None}
                chunks = read_chunks(self.path, part, {loc.name: (loc.at, loc.xxh3) for loc in locations
                                                       if loc.at and loc.xxh3}, verify=self.verify, into=direct)
                for item, loc in zip(items, locations, strict=True):
                    if loc.value:
                        self._load_value(planner, item, values[loc.name])
                    elif loc.name in direct:
                        planner.commit_tensor(item, direct[loc.name])
                    else:
                        self._load_item(planner, item, self._typed(item, chunks[loc.name], file))
                return
        tree = read_part(self.path, part, verify=self.verify, dec_key=self.dec_key)
        for item, loc in zip(items, locations, strict=True):
            if loc.name not in tree:
                raise sharded.missing_chunk(self.path, loc.name, file)
            if loc.value:
                self._load_value(planner, item, tree[loc.name])
            else:
                self._load_item(planner, item, tree[loc.name])

    def _load_value(self, planner: LoadPlanner, item: ReadItem, value: Any) -> None:
        """A typed-JSON non-tensor value (version 2) into the state, never through a pickle."""
        if item.type != LoadItemType.BYTE_IO:
            raise CorruptCheckpointError(f"{self.path}: {item.storage_index.fqn} is a tensor, the part holds a "
                                         "value; the checkpoint is damaged")
        if isinstance(planner, DefaultLoadPlanner):  # what its load_bytes does, without torch.load
            if planner.flatten_state_dict:
                set_element(planner.original_state_dict, planner.mappings[item.dest_index.fqn], value)
            else:
                planner.state_dict[item.dest_index.fqn] = value
            return
        data = io.BytesIO()  # another planner: the bytes it expects, pickled here from plain JSON values
        torch.save(value, data)
        data.seek(0)
        planner.load_bytes(item, data)

    def _whole_target(self, planner: LoadPlanner, item: ReadItem) -> torch.Tensor | None:
        """The tensor ``item`` loads into, when it takes the whole saved chunk as stored (the same
        dtype and shape, contiguous, on the CPU): its bytes can be read straight into it."""
        if item.type == LoadItemType.BYTE_IO:
            return None
        index = item.storage_index
        found = self.chunk_types.get((index.fqn, tuple(index.offset or ())))
        if found is None or any(int(o) for o in item.storage_offsets) or tuple(item.lengths) != found[1]:
            return None
        target = planner.resolve_tensor(item).detach()
        if (target.device.type != "cpu" or target.dtype != found[0] or tuple(target.size()) != found[1]
                or not target.is_contiguous()):
            return None
        return target

    def _typed(self, item: ReadItem, raw: torch.Tensor, file: str) -> torch.Tensor:
        """The saved chunk ``item`` reads, from its raw bytes (a non-tensor value stays bytes)."""
        if item.type == LoadItemType.BYTE_IO:
            return raw
        index = item.storage_index
        found = self.chunk_types.get((index.fqn, tuple(index.offset or ())))
        if found is None:
            raise CorruptCheckpointError(f"{self.path}: the metadata lists no saved chunk of {index.fqn} at "
                                         f"{tuple(index.offset or ())}; the checkpoint is damaged")
        dtype, sizes = found
        need = math.prod(sizes) * dtype.itemsize
        if raw.numel() != need:
            raise CorruptCheckpointError(f"{self.path}/{file}: chunk of {index.fqn} is {raw.numel()} bytes, "
                                         f"its shape {list(sizes)} and {dtype} need {need}")
        if raw.data_ptr() % dtype.itemsize:
            raw = raw.clone()
        return raw.view(dtype).view(sizes)

    def _load_item(self, planner: LoadPlanner, item: ReadItem, saved: torch.Tensor) -> None:
        if item.type == LoadItemType.BYTE_IO:
            data = saved.numpy().tobytes()
            _check_plain_data(data, f"{self.path}: {item.storage_index.fqn}")
            planner.load_bytes(item, io.BytesIO(data))
            return
        source = narrow(saved, item.storage_offsets, item.lengths)
        target = planner.resolve_tensor(item).detach()
        if target.size() != source.size():
            raise CorruptCheckpointError(f"{item.storage_index.fqn}: saved chunk has size "
                                         f"{tuple(source.size())}, the load plan wants {tuple(target.size())}")
        target.copy_(source)
        planner.commit_tensor(item, target)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return True


def _check_plain_data(data: bytes, where: str) -> None:
    """Refuse a non-tensor value that is more than plain data before DCP's planner unpickles it.

    DCP stores non-tensor values (optimizer param_groups) with torch.save and its default
    planner loads them with ``weights_only=False``, which would run whatever a hostile file
    names. The same bytes must first load under the restricted unpickler (``weights_only=True``):
    then the full unpickler meets only the globals the restricted one allowed.
    """
    try:
        torch.load(io.BytesIO(data), weights_only=True)
    except Exception as exc:
        raise CorruptCheckpointError(
            f"{where}: a non-tensor value is not plain data ({type(exc).__name__}); refusing to unpickle "
            "it. Only load sharded checkpoints from sources you trust, or re-save this one") from None


class RestoreFailed(CorruptCheckpointError):
    """A restore failed for a reason other than damage the reader found (a state that does not fit
    the checkpoint, memory): a restore never passes over a checkpoint for it."""

    @classmethod
    def wrapping(cls, path: str, err: BaseException) -> RestoreFailed:
        return cls(f"{path}: restore failed: {type(err).__name__}: {err}")


def restore_error(path: str, exc: CheckpointException) -> TorchResumeError:
    """The typed error of the first failing rank (a torchresume error keeps its type)."""
    first = next(iter(exc.failures.values()))
    err = first[0] if isinstance(first, tuple) else first
    if isinstance(err, TorchResumeError):
        return type(err)(str(err))
    return RestoreFailed.wrapping(path, err)
