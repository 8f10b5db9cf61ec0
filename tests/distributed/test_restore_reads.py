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

from pathlib import Path
from typing import Any

import pytest

from tests.distributed.conftest import Launch, torchrun


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
