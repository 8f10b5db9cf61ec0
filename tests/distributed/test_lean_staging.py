"""Stage only what is written (issue 23, item 2): under DDP an async save stages on each rank only
the replicated tensors that rank's plan writes, and the writes are spread evenly over the ranks.

A real 4-rank torchrun (gloo on CPU) saves the same replicated state five times in the background
(tests/distributed/worker.py ``lean_staging``). The first save stages every tensor (no plan yet);
the next two, with the same layout, stage ~1/4 of the replica on each rank, and the four shares add
up to the replica exactly; a new tensor on every rank, then one on rank 1 only, stage everything
again. Every checkpoint restores bitwise to the state at its call, though the live state moved on,
a tuple of tensors (written whole, as bytes) included. DTensor shards are always staged (one rank,
in this process).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

from tests.distributed.conftest import Launch, torchrun
from torchresume.distributed import ShardedStore

RANKS = 4


@pytest.fixture(scope="module")
def launch(tmp_path_factory: pytest.TempPathFactory) -> Launch:
    root = tmp_path_factory.mktemp("lean")
    done = torchrun(RANKS, "lean_staging", root / "ckpt", root / "out")
    assert done.returncode == 0, done.output[-3000:]
    return done


def test_steady_saves_stage_one_share_per_rank(launch: Launch) -> None:
    results = [launch.results[r] for r in range(RANKS)]
    replica, largest = results[0]["replica"], results[0]["largest"]
    assert all(res["staged"][0] == replica for res in results)  # save 1: no plan yet, everything
    for save in (1, 2):  # saves 2 and 3: the plan of save 1 holds
        shares = [res["staged"][save] for res in results]
        assert sum(shares) == replica, shares  # each tensor staged by exactly the rank that writes it
        assert max(shares) <= replica / RANKS + largest, shares


def test_a_changed_layout_stages_everything_again(launch: Launch) -> None:
    results = [launch.results[r] for r in range(RANKS)]
    grown = results[0]["replica"] + 25 * 256 * 4  # save 4 added t24 on every rank
    assert all(res["staged"][3] == grown for res in results)
    assert [res["staged"][4] for res in results] == [grown, grown + 512 * 4, grown, grown]  # rank 1's own tensor


def test_writes_are_spread_evenly(launch: Launch) -> None:
    written = launch.results[0]["written"]
    assert len(written) == RANKS and min(written) > 0
    assert max(written) - min(written) <= launch.results[0]["largest"] + 4096, written  # + part headers


def test_every_checkpoint_restores_the_state_at_its_call(launch: Launch) -> None:
    for r in range(RANKS):
        assert launch.results[r]["equal"] == {str(s): True for s in range(1, 6)}, (r, launch.results[r]["equal"])


def test_the_worker_measures_real_files(launch: Launch) -> None:
    assert sum(launch.results[0]["written"]) >= launch.results[0]["replica"]  # every byte landed in a part


def test_dtensor_shards_are_always_staged(one_rank_group: None, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CUDA mesh ``DTensor.from_local`` copies a host tensor to the device: a placeholder there
    would become a real tensor of zeros. Emulated on a CPU mesh with the same copy; every save of
    the shard restores its values."""
    real = DTensor.from_local
    monkeypatch.setattr(DTensor, "from_local",
                        staticmethod(lambda t, *a, **k: real(t.clone(memory_format=torch.contiguous_format), *a, **k)))
    mesh = init_device_mesh("cpu", (1,))
    weight = distribute_tensor(torch.arange(8.0), mesh, [Shard(0)])
    mgr = ShardedStore(str(tmp_path / "ck"), prefix="t", keep=5, async_save=True)
    for step in (1, 2, 3):
        mgr.save({"model": {"w": weight, "b": torch.full((4,), float(step))}}, epoch=1, step=step)
        mgr.wait()
        into = {"model": {"w": distribute_tensor(torch.full((8,), -1.0), mesh, [Shard(0)]), "b": torch.zeros(4)}}
        assert mgr.restore(into, path=mgr.path_for(1, step)) is not None
        assert into["model"]["w"].to_local().tolist() == list(range(8)) and into["model"]["b"].eq(step).all(), step
    mgr.close()
