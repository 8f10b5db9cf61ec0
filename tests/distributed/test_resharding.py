"""FSDP2 ``fully_shard`` state saved at 2 ranks, loaded at 4, at 1 and (saved at 4) at 2: equal to the full state."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.distributed.conftest import torchrun

NAMES = ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight", "fc3.bias", "fc3.weight"]


def assert_equal_everywhere(launch, nproc: int, saved_world: int) -> None:  # type: ignore[no-untyped-def]
    assert launch.returncode == 0, launch.output
    assert sorted(launch.results) == list(range(nproc))
    for res in launch.results.values():
        assert res["world_size"] == saved_world
        assert res["names"] == NAMES
        assert all(res["equal"][n] for n in NAMES), res
        assert set(res["equal"]) == set(NAMES)
        assert [s["rank"] for s in res["rank_states"]] == list(range(saved_world))


@pytest.mark.parametrize(("save_at", "load_at", "scenario"),
                         [(2, 4, "fsdp_load"), (2, 1, "plain_load"), (4, 2, "fsdp_load")])
def test_fsdp_reshard(tmp_path: Path, save_at: int, load_at: int, scenario: str) -> None:
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    saved = torchrun(save_at, "fsdp_save", ckpt, out)
    assert saved.returncode == 0, saved.output
    assert all(r["sharded"] for r in saved.results.values())  # the parameters really are DTensors
    shards = sorted(p.name for p in Path(saved.results[0]["path"]).glob("shard-*"))
    assert len(shards) == save_at  # every rank wrote its own shard
    assert_equal_everywhere(torchrun(load_at, scenario, ckpt, out), load_at, save_at)
