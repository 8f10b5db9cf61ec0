"""DCP StorageWriter that writes each rank's shard as native torchresume parts.

Every rank writes the chunks DCP planned for it into ``shard-{rank}-{i}.safetensors``
parts (safetensors with per-tensor checksums, any storage URL) and its own
``rank_state`` into ``rank-{rank}.safetensors``. Its write result, gathered by DCP to the
coordinator, is one compact tuple (``Written``): the size and header digest of each part it wrote
and, per chunk of its plan, the index of the part holding it, its byte range in that part and its
xxh3, plus a digest of the chunk names; the coordinator rebuilds every chunk's location from the
global plan it made (it knows each rank's items), checking the digest, so the gather carries a few
numbers per chunk, not a record of each. The byte ranges and digests go into ``dcp_metadata.json``:
a restore reads just the chunks it needs and checks each against its digest (``reader.py``).
The coordinator's ``finish`` writes ``dcp_metadata.json`` and then the manifest (the commit),
only after every rank's results arrived; a rank that failed leaves no commit.
With ``lean=True`` it then empties the metadata object it was given (a copy, see
``plan_cache.py``), so DCP's broadcast of it back to every rank carries next to nothing.

With ``deadline_s`` a rank whose parts are not all written that many seconds after the writer
was made (the start of its save) raises ``SaveDeadlineError`` from ``write_data``: DCP carries it
to the coordinator with the write results, so every rank fails the save and nothing is committed.
The parts are written in daemon threads, so the late rank abandons them: it starts no further
part, and a write hung in its storage never holds the process's exit.
"""

from __future__ import annotations

import concurrent.futures as cf
import io
import os
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import xxhash
from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex, StorageMeta
from torch.distributed.checkpoint.planner import SavePlan, SavePlanner, WriteItem, WriteItemType
from torch.distributed.checkpoint.storage import StorageWriter
from torch.futures import Future

from torchresume.errors import CheckpointWriteError, SaveDeadlineError
from torchresume.files import PartRecord, commit_directory, write_part
from torchresume.files import dcp_metadata as dcp_json
from torchresume.files.dcp_metadata import Location
from torchresume.files.directory import PART_SUFFIX, Span
from torchresume.files.sharded import LAYOUT, rank_part_info
from torchresume.storage import resolve
from torchresume.storage.base import write_all

T = TypeVar("T")
# One rank's write result: (rank, encrypted, ((size, header xxh3), ...) of its shard parts then its
# rank part, the part index of each item of its final plan in plan order, (begin, end, xxh3) of each
# item's bytes in its part flattened in plan order, xxh3 of the items' chunk keys).
Written = tuple[int, bool, tuple[tuple[int, int], ...], bytes, tuple[int, ...], int]


def shard_name(rank: int, i: int) -> str:
    """Part ``i`` of ``rank``'s shard (without the suffix)."""
    return f"shard-{rank:05d}-{i}"


def rank_name(rank: int) -> str:
    """``rank``'s own part, its ``rank_state`` (without the suffix)."""
    return f"rank-{rank:05d}"


def keys_digest(items: list[WriteItem]) -> int:
    """xxh3 of the chunk keys of ``items`` in order: the coordinator checks it maps the items the rank wrote."""
    return xxhash.xxh3_64_intdigest("\0".join(chunk_key(item) for item in items).encode())


def chunk_key(item: WriteItem) -> str:
    """The tensor name of one chunk: its fqn, with ``@offsets`` when it is a piece of the tensor."""
    fqn = item.index.fqn
    td = item.tensor_data
    if td is None or (all(o == 0 for o in td.chunk.offsets) and list(td.chunk.sizes) == list(td.size)):
        return fqn
    return fqn + "@" + ",".join(str(o) for o in td.chunk.offsets)


def _item_bytes(item: WriteItem) -> int:
    td = item.tensor_data
    if td is None:
        return 1
    n = 1
    for s in td.chunk.sizes:
        n *= int(s)
    return n * td.properties.dtype.itemsize


def buckets(items: list[WriteItem], n: int) -> list[list[WriteItem]]:
    """``items`` spread over at most ``n`` buckets of similar byte size (largest first)."""
    out: list[list[WriteItem]] = [[] for _ in range(max(1, min(n, len(items))))]
    sizes = [0] * len(out)
    for item in sorted(items, key=_item_bytes, reverse=True):
        i = sizes.index(min(sizes))
        out[i].append(item)
        sizes[i] += _item_bytes(item)
    return [b for b in out if b]


def _resolved(planner: SavePlanner, item: WriteItem) -> Any:
    """The tensor of a chunk; a non-tensor value itself (stored as typed JSON in the part's header,
    as one process stores it: never DCP's ``torch.save`` bytes)."""
    if item.type == WriteItemType.BYTE_IO:
        if hasattr(planner, "resolve_value"):  # plan_cache's planner: checks the value was staged first
            return planner.resolve_value(item)
        if not hasattr(planner, "lookup_object"):
            raise CheckpointWriteError("PartWriter needs DCP's DefaultSavePlanner (or a subclass): it stores "
                                       "non-tensor values as JSON, not DCP's pickles")
        return planner.lookup_object(item.index)
    data = planner.resolve_data(item)
    if isinstance(data, io.BytesIO):  # a planner that pickles what the default does not
        raise CheckpointWriteError(f"{item.index.fqn}: the save planner gave pickled bytes for a tensor; "
                                   "use DCP's DefaultSavePlanner")
    return data.detach()


def _in_thread(work: Callable[[], T], name: str) -> cf.Future[T]:
    """``work()`` in a daemon thread: a write abandoned at the deadline never holds the process's exit."""
    done: cf.Future[T] = cf.Future()

    def run() -> None:
        try:
            done.set_result(work())
        except BaseException as exc:  # handed to the waiting rank, as a pool would
            done.set_exception(exc)
    threading.Thread(target=run, name=name, daemon=True).start()
    return done


class PartWriter(StorageWriter):
    """Writes one checkpoint directory; ``rank_state``, ``info`` and ``append`` are set per save by the manager.

    ``enc_key``: every part (shards and rank state) is AES-GCM encrypted with it. ``lean``: the
    coordinator empties the metadata once committed (``dcp.save`` then returns an empty one).
    ``deadline_s``: this rank's parts must be written that many seconds after the writer is made,
    else ``write_data`` raises ``SaveDeadlineError`` and abandons them (None: no deadline).
    """

    def __init__(self, path: str, *, threads: int = 1, rank_state: Any = None,
                 info: dict[str, Any] | None = None, append: dict[str, Any] | None = None,
                 enc_key: bytes | None = None, lean: bool = False, deadline_s: float | None = None) -> None:
        super().__init__()
        self.deadline_s = deadline_s
        self.deadline = None if deadline_s is None else time.monotonic() + deadline_s
        self.path = path
        self.threads = max(1, min(threads, 256))  # a part index travels as one byte
        self.rank_state = rank_state
        self.info = dict(info or {})
        self.append = dict(append or {})
        self.enc_key = enc_key
        self.lean = lean
        self.rank = 0
        self.save_id = os.urandom(8).hex()
        self._planner: SavePlanner | None = None

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        if checkpoint_id:
            self.path = str(checkpoint_id)
        self.save_id = os.urandom(8).hex()

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self.rank = int(kwargs.get("rank") or 0)

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        return plans

    def storage_meta(self) -> StorageMeta | None:
        return StorageMeta(checkpoint_id=self.path, save_id=self.save_id)

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[Written]]:  # type: ignore[override]
        self._planner = planner  # on the coordinator, finish reads the global plan from it
        jobs = [(shard_name(self.rank, i), bucket) for i, bucket in enumerate(buckets(plan.items, self.threads))]
        records: list[PartRecord] = []
        part_of: dict[int, int] = {}
        spans: dict[int, Span] = {}
        written_parts = self._in_time([partial(self._write_bucket, planner, *job) for job in jobs])
        for i, (record, chunk_spans) in enumerate(written_parts):
            records.append(record)
            part_of.update((id(item), i) for item in jobs[i][1])
            spans.update(zip(map(id, jobs[i][1]), chunk_spans, strict=True))
        records += self._in_time([lambda: write_part(self.path, rank_name(self.rank), "state",
                                                     {f"__rank_state_{self.rank:05d}": self.rank_state},
                                                     info=rank_part_info({"info": self.info}),
                                                     enc_key=self.enc_key)])
        written: Written = (self.rank, self.enc_key is not None,
                            tuple((r.size, int(r.header_xxh3, 16)) for r in records),
                            bytes(part_of[id(item)] for item in plan.items),
                            tuple(n for item in plan.items for n in spans[id(item)]), keys_digest(plan.items))
        fut: Future[list[Written]] = Future()
        fut.set_result([written])
        return fut

    def _in_time(self, writes: list[Callable[[], T]]) -> list[T]:
        """Run ``writes`` in parallel and return their results once all ended (the first failure
        raised then); past the deadline raise SaveDeadlineError and leave them running, abandoned."""
        futures = [_in_thread(w, f"torchresume-part-{self.rank}-{i}") for i, w in enumerate(writes)]
        left = None if self.deadline is None else max(0.0, self.deadline - time.monotonic())
        _, running = cf.wait(futures, timeout=left)
        if running:
            raise SaveDeadlineError(f"rank {self.rank} did not write its part within "
                                    f"save_deadline_s={self.deadline_s:g}")
        return [f.result() for f in futures]

    def _write_bucket(self, planner: SavePlanner, name: str, items: list[WriteItem]) -> tuple[PartRecord, list[Span]]:
        spans: dict[str, Span] = {}
        record = write_part(self.path, name, "tensors", {chunk_key(item): _resolved(planner, item) for item in items},
                            enc_key=self.enc_key, spans=spans)
        return record, [spans.get(chunk_key(item), (0, 0, 0)) for item in items]  # a value has no bytes

    def _parts_and_locations(self, results: list[list[Written]]) -> tuple[list[PartRecord], list[str],
                                                                         dict[MetadataIndex, Location]]:
        """Every rank's part records and every chunk's location, from the compact results and the global plan."""
        plans = getattr(getattr(self, "_planner", None), "global_plan", None)
        if not isinstance(plans, list) or len(plans) != len(results):
            raise CheckpointWriteError(f"{self.path}: PartWriter needs DCP's DefaultSavePlanner (or a subclass): "
                                       "the coordinator rebuilds where each chunk went from its global plan")
        parts: list[PartRecord] = []
        rank_parts: list[str] = []
        locations: dict[MetadataIndex, Location] = {}
        for per_rank, plan in zip(results, plans, strict=True):
            ((rank, encrypted, sizes, part_of, spans, digest),) = per_rank
            items = plan.items
            if (len(part_of) != len(items) or len(spans) != 3 * len(items) or digest != keys_digest(items)
                    or max(part_of, default=0) >= len(sizes) - 1):
                raise CheckpointWriteError(f"{self.path}: rank {rank} wrote other chunks than the global plan "
                                           "gives it; nothing was committed")
            files = [shard_name(rank, i) + PART_SUFFIX for i in range(len(sizes) - 1)] + [rank_name(rank) + PART_SUFFIX]
            parts += [PartRecord(file, size, f"{xxh3:016x}", encrypted)
                      for file, (size, xxh3) in zip(files, sizes, strict=True)]
            rank_parts.append(files[-1])
            locations.update((item.index, Location(files[i], chunk_key(item), value=True)
                              if item.type == WriteItemType.BYTE_IO else
                              Location(files[i], chunk_key(item), (spans[3 * k], spans[3 * k + 1]),
                                       f"{spans[3 * k + 2]:016x}"))
                             for k, (item, i) in enumerate(zip(items, part_of, strict=True)))
        return parts, rank_parts, locations

    def finish(self, metadata: Metadata, results: list[list[Written]]) -> None:  # type: ignore[override]
        parts, rank_parts, locations = self._parts_and_locations(results)
        metadata.storage_meta = self.storage_meta()
        raw = dcp_json.encode(metadata, locations)
        storage, where = resolve(self.path)
        target = storage.join(where, dcp_json.FILE)
        storage.retrying(f"write of {target}", lambda: write_all(storage, target, [raw]))
        info = {**self.info, "layout": LAYOUT, "world_size": len(results), "rank_parts": rank_parts,
                "dcp_metadata": {"file": dcp_json.FILE, "size": len(raw), "xxh3": xxhash.xxh3_64_hexdigest(raw)}}
        commit_directory(self.path, parts, info=info, append=self.append, enc_key=self.enc_key)
        if self.lean:  # what DCP broadcasts back to every rank; the planner's cached metadata is another object
            metadata.state_dict_metadata, metadata.planner_data, metadata.storage_data = {}, None, None
            metadata.storage_meta = metadata.version = None

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return True
