"""Hostile sharded checkpoints: no code runs, no name leads out, no change of meaning passes.

The pickle case: a version 1 checkpoint (tests/fixtures/sharded_v1, written before non-tensor
values became typed JSON) whose part the attacker rewrote with a pickle that would create a file
when unpickled, every checksum and the manifest record recomputed, so only the plain-data check
stands between the file and ``torch.load(weights_only=False)`` inside DCP's default load planner.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import xxhash
from torch import nn

from torchresume.distributed import DistributedCheckpointManager
from torchresume.distributed.reader import read_part
from torchresume.errors import CorruptCheckpointError, DamagedRunError
from torchresume.files.directory import write_part
from torchresume.format import native

V1 = Path(__file__).parents[1] / "fixtures" / "sharded_v1"


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.makedirs, (self.marker,))


def _pickled_values(tree: dict[str, Any]) -> list[str]:
    names = []
    for name, value in tree.items():
        if isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.dim() == 1:
            try:
                torch.load(io.BytesIO(value.numpy().tobytes()), weights_only=True)
            except Exception:
                continue
            names.append(name)
    return names


def _follow_the_parts(path: str, doc: dict[str, Any], ranges: bool) -> None:
    """The attacker also rewrites dcp_metadata.json to match the rewritten parts (each chunk's byte
    range and xxh3, read from its part's header; ``ranges=False``: none, as written before 0.3) and
    the manifest's digest of it, so only the plain-data check stands in the way."""
    meta_file = Path(path) / "dcp_metadata.json"
    meta = json.loads(meta_file.read_text())
    for entry in meta["storage_data"]:
        if not ranges:
            entry.pop("at", None), entry.pop("xxh3", None)
            continue
        with open(Path(path) / entry["file"], "rb") as f:
            header = native.read_header(f, os.path.getsize(Path(path) / entry["file"]), entry["file"])
        found = next(e for e in header.entries if e.name == entry["name"])
        entry["at"] = [header.data_start + found.begin, header.data_start + found.end]
        entry["xxh3"] = header.meta["checksums"]["tensors"][entry["name"]] if header.meta else None
    raw = json.dumps(meta, separators=(",", ":")).encode()
    meta_file.chmod(0o600)
    meta_file.write_bytes(raw)
    doc["info"]["dcp_metadata"].update(size=len(raw), xxh3=xxhash.xxh3_64_hexdigest(raw))


@pytest.mark.parametrize("ranges", [True, False], ids=["chunk-ranges", "before-0.3"])
def test_a_pickle_that_runs_code_is_refused_and_never_runs(tmp_path: Path, ranges: bool) -> None:
    net = nn.Linear(4, 3)
    mgr = DistributedCheckpointManager(str(tmp_path / "run"), prefix="x", keep=2)
    path = str(shutil.copytree(V1 / "plain" / "x-1_6.ckpt", tmp_path / "run" / "x-1_6.ckpt"))
    manifest_file = Path(path) / "manifest.json"
    doc = json.loads(manifest_file.read_text())
    marker = tmp_path / "pwned"
    rewritten = 0
    for record in doc["parts"]:
        tree = read_part(path, record)
        names = _pickled_values(tree)
        if not names:
            continue
        buffer = io.BytesIO()
        torch.save(_Payload(str(marker)), buffer)  # what DCP's torch.load(weights_only=False) would run
        for name in names:
            tree[name] = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
        new = write_part(path, record["file"].removesuffix(".safetensors"), "tensors", tree)
        record.update(size=new.size, header_xxh3=new.header_xxh3)
        rewritten += len(names)
    assert rewritten >= 1, "the optimizer's param_groups should be stored as pickled bytes"
    _follow_the_parts(path, doc, ranges)
    manifest_file.write_text(json.dumps(doc))

    state = {"model": nn.Linear(4, 3).state_dict(), "optim": torch.optim.Adam(net.parameters(), lr=0.1).state_dict()}
    with pytest.raises(CorruptCheckpointError, match=r"a non-tensor value is not plain data \(.*\); refusing to "
                                                    r"unpickle it"):
        mgr.restore(state, path=str(path))  # named: without it the only checkpoint is passed over
    assert not marker.exists()
    with pytest.raises(DamagedRunError, match="refusing to unpickle it"):  # the newest, passed over
        mgr.restore(state)
    assert not marker.exists()
