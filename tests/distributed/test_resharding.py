"""FSDP2 ``fully_shard`` state saved at 2 ranks, loaded at 4 and at 1, and saved at 4, loaded at 2.

Every loaded tensor equals the full state tensor by tensor; each rank's
``rank_state`` comes back too, indexed by the old rank.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.distributed.conftest import Launch, torchrun

NAMES = ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight", "fc3.bias", "fc3.weight"]


def save_at(nproc: int, root: Path) -> Path:
    saved = torchrun(nproc, "fsdp_save", root / "ckpt", root / "out")
    assert saved.returncode == 0, saved.output
    assert all(r["sharded"] for r in saved.results.values())  # the parameters really are DTensors
    writers = {p.name.split("-")[1] for p in Path(saved.results[0]["path"]).glob("shard-*")}
    assert writers == {f"{r:05d}" for r in range(nproc)}  # every rank wrote its own shard parts
    return root


def assert_equal_everywhere(launch: Launch, nproc: int, saved_world: int) -> None:
    assert launch.returncode == 0, launch.output
    assert sorted(launch.results) == list(range(nproc))
    for res in launch.results.values():
        assert res["world_size"] == saved_world
        assert res["names"] == NAMES
        assert set(res["equal"]) == set(NAMES)
        assert all(res["equal"][n] for n in NAMES), res
        assert [s["rank"] for s in res["rank_states"]] == list(range(saved_world))


@pytest.fixture(scope="module")
def saved_at_2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_at(2, tmp_path_factory.mktemp("reshard2"))


@pytest.mark.parametrize(("load_at", "scenario"), [(4, "fsdp_load"), (1, "plain_load")])
def test_saved_at_2(saved_at_2: Path, load_at: int, scenario: str) -> None:
    launch = torchrun(load_at, scenario, saved_at_2 / "ckpt", saved_at_2 / "out")
    assert_equal_everywhere(launch, load_at, 2)


def test_saved_at_4_loaded_at_2(tmp_path: Path) -> None:
    root = save_at(4, tmp_path)
    assert_equal_everywhere(torchrun(2, "fsdp_load", root / "ckpt", root / "out"), 2, 4)
