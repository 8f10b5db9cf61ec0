"""DCP StorageReader over a committed torchresume sharded checkpoint.

Reads the manifest (refusing an uncommitted directory), the JSON DCP metadata
(checked against the digest the manifest recorded), and for each planned read
only the part files that hold the wanted chunks, each checked against the
manifest and its per-tensor checksums. DCP's planner does the resharding.
"""

from __future__ import annotations

import io
import os
from typing import Any

import torch
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner, ReadItem
from torch.distributed.checkpoint.storage import StorageReader
from torch.futures import Future

from torchresume.distributed import metadata as dcp_json
from torchresume.errors import CorruptCheckpointError, TorchResumeError
from torchresume.files import directory, sharded
from torchresume.format import reader
from torchresume.storage import resolve


def sharded_manifest(path: str) -> dict[str, Any]:
    """The committed manifest of sharded checkpoint ``path``; CorruptCheckpointError if it is not one."""
    doc = directory.read_manifest(path)
    if not sharded.is_sharded(doc):
        raise CorruptCheckpointError(f"{path}: a directory checkpoint but not a sharded (torch.distributed) "
                                     "one; load it with torchresume.load_checkpoint")
    return doc


def is_sharded(path: str) -> bool:
    """True when ``path`` is a committed directory checkpoint written by the distributed manager."""
    try:
        return sharded.is_sharded(directory.read_manifest(path))
    except (OSError, ValueError):
        return False


def load_metadata(path: str, doc: dict[str, Any]) -> Metadata:
    """The DCP metadata of ``path``, checked against the digest in manifest ``doc``."""
    raw = sharded.read_metadata_json(path, doc)
    return dcp_json.decode(raw, f"{path}/{sharded.METADATA_FILE}")


def read_part(path: str, part: dict[str, Any], *, verify: bool = True,
              dec_key: bytes | None = None) -> dict[str, Any]:
    """The tree of one part file, checked against its manifest record (decrypted with ``dec_key``)."""
    storage, where = resolve(path)
    f, size = storage.open_read(storage.join(where, part["file"]))
    with f:
        if size != part["size"]:
            raise CorruptCheckpointError(f"{path}: {part['file']} is {size} bytes, the manifest says "
                                         f"{part['size']}; the part is damaged or was replaced")
        ckpt = reader.read(f, size, f"{path}/{part['file']}", dec_key=dec_key, verify=verify,
                           header_xxh3=part["header_xxh3"])
    if not isinstance(ckpt.tree, dict):
        raise CorruptCheckpointError(f"{path}: part {part['file']} does not hold a dict")
    return ckpt.tree


def narrow(tensor: torch.Tensor, offsets: Any, lengths: Any) -> torch.Tensor:
    for dim, (start, length) in enumerate(zip(offsets, lengths, strict=True)):
        tensor = torch.narrow(tensor, dim, int(start), int(length))
    return tensor


class PartReader(StorageReader):
    """Loads chunks from the part files of one committed sharded checkpoint."""

    def __init__(self, path: str, *, verify: bool = True, dec_key: bytes | None = None) -> None:
        super().__init__()
        self.path = path
        self.verify = verify
        self.dec_key = dec_key
        self.parts: dict[str, dict[str, Any]] = {}
        self.storage_data: dict[Any, dcp_json.Location] = {}

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        if checkpoint_id:
            self.path = str(checkpoint_id)

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        doc = sharded_manifest(self.path)
        self.parts = {p["file"]: p for p in doc["parts"]}
        return load_metadata(self.path, doc)

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self.storage_data = metadata.storage_data

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
            tree = read_part(self.path, self.parts[file], verify=self.verify, dec_key=self.dec_key)
            for item in items:
                name = self.storage_data[item.storage_index].name
                if name not in tree:
                    raise sharded.missing_chunk(self.path, name, file)
                self._load_item(planner, item, tree[name])
        fut: Future[None] = Future()
        fut.set_result(None)
        return fut

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


def restore_error(path: str, exc: CheckpointException) -> TorchResumeError:
    """The typed error of the first failing rank (a torchresume error keeps its type)."""
    first = next(iter(exc.failures.values()))
    err = first[0] if isinstance(first, tuple) else first
    if isinstance(err, TorchResumeError):
        return type(err)(str(err))
    return CorruptCheckpointError(f"{path}: restore failed: {type(err).__name__}: {err}")
