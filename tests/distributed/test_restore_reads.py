"""Restore reads only what each rank needs (issue 23, item 1), counted on the real files.

FSDP2 state saved at 2 ranks is restored at 2 and at 4 ranks while every file each rank opens
under the checkpoint, and the bytes it reads from it, are counted (tests/distributed/worker.py's
``CountedReads``: ``open`` and ``mmap`` wrapped in the rank's own process, the product unchanged).
Each rank opens its own old rank part and no other; a rank the saving job did not have opens old
rank 0's, the documented rule; rank 0 reads no other rank's part, so none can pass through it
(listing the checkpoints reads manifests only, no part header). Other old ranks' states are still
there on request, read by the rank that asks. Shard parts are read whole: at another world size a
rank reads every part that holds a chunk it needs (benchmarks/distributed_scale.py measures the bytes
per rank at each world size).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import xxhash
from torch import nn

from tests.distributed.conftest import Launch, torchrun
from torchresume.cli.main import main
from torchresume.distributed import ShardedStore
from torchresume.errors import CorruptCheckpointError
from torchresume.files import seal


@pytest.fixture(scope="module")
def saved_at_2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reads2")
    saved = torchrun(2, "fsdp_save", root / "ckpt", root / "out")
    assert saved.returncode == 0, saved.output
    return root


@pytest.fixture(scope="module")
def restored_at_2(saved_at_2: Path) -> Launch:
    launch = torchrun(2, "restore_reads", saved_at_2 / "ckpt", saved_at_2 / "out")
    assert launch.returncode == 0, launch.output
    return launch


def rank_parts(read: dict[str, Any]) -> list[str]:
    return sorted(name for name in read if name.startswith("rank-"))


def shard_writers(read: dict[str, Any]) -> set[str]:
    return {name.split("-")[1] for name in read if name.startswith("shard-")}


def test_same_world_each_rank_reads_its_own_part_and_shards(restored_at_2: Launch) -> None:
    assert sorted(restored_at_2.results) == [0, 1]
    for rank, res in restored_at_2.results.items():
        assert res["equal"], res
        assert rank_parts(res["read"]) == [f"rank-{rank:05d}.safetensors"], res["read"]
        assert shard_writers(res["read"]) == {f"{rank:05d}"}, res["read"]  # its plan needs its own shards only
        assert res["rank_state"] == {"rank": rank} and res["read_before_asked"] == [rank]
        assert all(n > 0 for n in res["read"].values())  # every file opened was read
        # Asked for every old rank's state afterwards, it reads the others' parts itself.
        assert rank_parts(res["later"]) == [f"rank-{r:05d}.safetensors" for r in range(2) if r != rank]
        assert [s["rank"] for s in res["rank_states"]] == [0, 1]


def test_new_ranks_read_old_rank_0s_part(saved_at_2: Path, restored_at_2: Launch) -> None:
    launch = torchrun(4, "restore_reads", saved_at_2 / "ckpt", saved_at_2 / "out")
    assert launch.returncode == 0, launch.output
    assert sorted(launch.results) == [0, 1, 2, 3]
    for rank, res in launch.results.items():
        assert res["equal"] and res["world_size"] == 2, res
        old = rank if rank < 2 else 0  # no old part of its own: old rank 0's (data position, scheduler)
        assert rank_parts(res["read"]) == [f"rank-{old:05d}.safetensors"], (rank, res["read"])
        assert res["read_before_asked"] == [old]
        assert res["rank_state"] == ({"rank": rank} if rank < 2 else None)
    own_part = {rank: res["read"][f"rank-{rank if rank < 2 else 0:05d}.safetensors"]
                for rank, res in launch.results.items()}
    # Every rank read one rank part, of the same size as at 2 ranks: the rank-state read does not grow.
    assert len(set(own_part.values()) | {restored_at_2.results[0]["read"]["rank-00000.safetensors"]}) == 1


# -- one process: which bytes of a part a restore reads, and checkpoints written before 0.3 -------------
def _state() -> dict[str, Any]:
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(3, 8)).sum().backward()
    opt.step()  # optimizer state: tensors and non-tensor values (param_groups, DCP's bytes)
    return {"model": net.state_dict(), "optim": opt.state_dict()}


def _zeroed(state: dict[str, Any]) -> dict[str, Any]:
    return {"model": {k: torch.zeros_like(v) for k, v in state["model"].items()}, "optim": state["optim"]}


def _equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def _reads_during(fn: Any, root: Path) -> dict[str, int]:
    """Bytes read from each file under ``root`` while ``fn`` runs (read/readinto results and mmaps)."""
    from tests.distributed.worker import CountedReads
    counted = CountedReads(str(root))
    with counted:
        fn()
    return counted.nbytes


def _rewrite_metadata(path: Path, edit: Callable[[dict[str, Any]], object]) -> None:
    """``edit`` the dcp_metadata.json of checkpoint ``path``; its size and digest in the manifest follow."""
    meta_file, manifest_file = path / "dcp_metadata.json", path / "manifest.json"
    meta = json.loads(meta_file.read_text())
    edit(meta)
    raw = json.dumps(meta, separators=(",", ":")).encode()
    doc = json.loads(manifest_file.read_text())
    doc["info"]["dcp_metadata"].update(size=len(raw), xxh3=xxhash.xxh3_64_hexdigest(raw))
    doc = seal.sealer(None)(doc)  # the manifest's digest follows too (xxh3: anyone can)
    for file, data in ((meta_file, raw), (manifest_file, json.dumps(doc).encode())):
        file.chmod(0o600)
        file.write_bytes(data)


def _header_size(part: Path) -> int:
    """Bytes of a part's header (the u64 length and the JSON it gives)."""
    with open(part, "rb") as f:
        return 8 + int.from_bytes(f.read(8), "little")


def _as_written_before(path: Path) -> None:
    """Make ``path`` what the sharded writer wrote before 0.3: no ``at``/``xxh3`` per chunk in
    dcp_metadata.json (everything else was the same)."""
    def strip(meta: dict[str, Any]) -> None:
        for entry in meta["storage_data"]:
            entry.pop("at", None), entry.pop("xxh3", None)
    _rewrite_metadata(path, strip)


def test_restore_reads_only_the_chunks_and_checks_each(tmp_path: Path) -> None:
    state = _state()
    mgr = ShardedStore(str(tmp_path), prefix="r", keep=5, threads=2)
    path = Path(mgr.save(state, epoch=1, step=1) or "")
    stored = json.loads((path / "dcp_metadata.json").read_text())["storage_data"]
    entries = [e for e in stored if not e.get("value")]
    assert all(e["at"][0] < e["at"][1] and len(e["xxh3"]) == 16 for e in entries)
    with_values = {e["file"] for e in stored if e.get("value")}  # non-tensor values: JSON in the header
    assert with_values and all("at" not in e for e in stored if e.get("value"))
    restored = _zeroed(state)
    read = _reads_during(lambda: mgr.restore(restored), tmp_path)
    assert _equal(restored, state)
    shards = {name: n for name, n in read.items() if name.startswith("shard-")}
    chunk_bytes = sum(e["at"][1] - e["at"][0] for e in entries)
    headers = sum(_header_size(path / file) for file in with_values)
    assert sum(shards.values()) == chunk_bytes + headers  # the chunks' bytes, the values' headers: no more
    assert chunk_bytes < sum((path / name).stat().st_size for name in shards)
    # A flipped byte inside a chunk: that chunk's checksum fails, the restore raises
    target = max(entries, key=lambda e: e["at"][1] - e["at"][0])
    part = path / target["file"]
    part.chmod(0o600)
    data = bytearray(part.read_bytes())
    data[target["at"][0] + 3] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match=f"checksum mismatch in tensor {target['name']!r}"):
        mgr.restore(_zeroed(state), path=str(path))  # named: the newest alone would be passed over
    mgr.close()


def test_a_chunk_range_outside_its_part_is_refused(tmp_path: Path) -> None:
    from torchresume.files.single import read_checkpoint
    mgr = ShardedStore(str(tmp_path), prefix="r")
    path = Path(mgr.save(_state(), epoch=1, step=1) or "")
    mgr.close()
    def past_the_end(meta: dict[str, Any]) -> None:
        next(e for e in meta["storage_data"] if "at" in e)["at"][1] += 1 << 30
    _rewrite_metadata(path, past_the_end)
    with pytest.raises(CorruptCheckpointError, match="outside its part"):
        read_checkpoint(str(path))
    with pytest.raises(CorruptCheckpointError, match="outside its part"):  # the restore checks the metadata too
        mgr.restore(_state(), path=str(path))


def test_a_checkpoint_written_before_0_3_reads_whole_parts(tmp_path: Path) -> None:
    state = _state()
    mgr = ShardedStore(str(tmp_path), prefix="old", keep=5)
    path = Path(mgr.save(state, epoch=1, step=1) or "")
    _as_written_before(path)
    restored = _zeroed(state)
    read = _reads_during(lambda: mgr.restore(restored), tmp_path)
    assert _equal(restored, state)
    for name in (p.name for p in path.glob("shard-*")):
        assert read[name] >= (path / name).stat().st_size  # read whole and checked as before
    assert main(["verify", str(path)]) == 0  # still a valid checkpoint for the checker
    part = next(path.glob("shard-*"))  # and its per-tensor checksums still guard it
    part.chmod(0o600)
    data = bytearray(part.read_bytes())
    data[-2] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match="checksum mismatch"):
        mgr.restore(_zeroed(state), path=str(path))
    mgr.close()


# -- 2 and 4 ranks: what grows with the world size -----------------------------------------------------
@pytest.fixture(scope="module")
def probes(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Launch]:
    out = {}
    for ranks in (2, 4):
        root = tmp_path_factory.mktemp(f"scale{ranks}")
        launch = torchrun(ranks, "scale_probe", root / "ckpt", root / "out")
        assert launch.returncode == 0, launch.output
        assert sorted(launch.results) == list(range(ranks)) and all(r["equal"] for r in launch.results.values())
        out[ranks] = launch
    return out


def test_restore_bytes_per_rank_do_not_grow_with_the_world_size(probes: dict[int, Launch]) -> None:
    """Each rank reads every chunk's bytes (the state is replicated) and nothing else of the shard
    parts: the same bytes at 2 and at 4 ranks. What grows is the manifest (a record per part):
    under 1 KiB per added rank here, read once (rank 0 also reads it to find the newest)."""
    def shard_bytes(res: dict[str, Any]) -> int:
        return sum(n for name, n in res["read"].items() if name.startswith("shard-"))

    def others(res: dict[str, Any]) -> int:
        return sum(n for name, n in res["read"].items() if name != "manifest.json")

    data = 48 * 64 * 4
    for launch in probes.values():
        assert {shard_bytes(res) for res in launch.results.values()} == {data}
    rest = [others(res) for launch in probes.values() for res in launch.results.values()]
    assert max(rest) - min(rest) < 64, rest  # the metadata, the own rank part: the same (offsets' digits aside)
    manifest = {ranks: max(res["read"]["manifest.json"] for r, res in launch.results.items() if r)
                for ranks, launch in probes.items()}
    assert 0 < manifest[4] - manifest[2] < 2 * 1024, manifest


def test_rank_0_payload_per_steady_save_grows_by_a_few_hundred_bytes_per_rank(probes: dict[int, Launch]) -> None:
    """Rank 0's payload in a save whose plan is reused: a compact result from each rank (its parts'
    sizes and digests; a part index, byte range and digest per chunk it wrote) and the small
    messages of DCP's object collectives. No record per chunk: the coordinator derives locations."""
    total = {ranks: launch.results[0]["sent"] + launch.results[0]["received"] for ranks, launch in probes.items()}
    chunks = 48
    assert total[2] < 24 * chunks + 1024, total  # ~19 bytes per chunk the other rank wrote, and a few hundred
    assert (total[4] - total[2]) / 2 < 512, total  # per added rank
