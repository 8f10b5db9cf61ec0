"""Plan once (issue 23, item 3): steady saves reuse the cached plan and metadata, a changed state plans
again, and every checkpoint still holds what was saved. Replicated writes are spread over the ranks,
and a placeholder (a tensor this rank did not stage) is never written (item 2). One process, no
torchrun: the caching path of DCP's planner runs the same without a process group (a 32-rank run is
benchmarks/distributed_scale.py; a 4-rank one test_lean_staging.py)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import create_default_local_save_plan
from torch.distributed.checkpoint.planner import SavePlan, SavePlanner

from torchresume.distributed import ShardedStore
from torchresume.distributed.plan_cache import cached_planner, forget, spread
from torchresume.distributed.writer import PartWriter
from torchresume.errors import CheckpointWriteError
from torchresume.staging import Placeholders


def tensors(path: str) -> list[str]:
    return sorted(json.loads((Path(path) / "dcp_metadata.json").read_text())["state_dict_metadata"])


def restored(mgr: ShardedStore, path: str, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = {"model": {k: torch.zeros_like(v) for k, v in like.items()}}
    assert mgr.restore(state, path=path) is not None
    return state["model"]


def test_steady_saves_reuse_the_plan_and_a_new_tensor_plans_again(tmp_path: Path) -> None:
    mgr = ShardedStore(str(tmp_path), prefix="p", keep=10)
    model = {"a": torch.arange(6.0), "b": torch.ones(2, 3)}
    first = mgr.save({"model": model}, epoch=1, step=1)
    cached = SavePlanner._cached_metadata[mgr._plan_key]
    model["a"] += 1  # values change, the plan does not
    second = mgr.save({"model": model}, epoch=1, step=2)
    assert SavePlanner._cached_metadata[mgr._plan_key] is cached  # reused, not planned again
    assert torch.equal(restored(mgr, second, model)["a"], torch.arange(6.0) + 1)
    assert torch.equal(restored(mgr, first, model)["a"], torch.arange(6.0))
    model["c"] = torch.full((4,), 7.0)  # a new tensor: the cached plan is invalid
    third = mgr.save({"model": model}, epoch=1, step=3)
    assert SavePlanner._cached_metadata[mgr._plan_key] is not cached
    assert tensors(third) == ["model.a", "model.b", "model.c"] and tensors(second) == ["model.a", "model.b"]
    assert torch.equal(restored(mgr, third, model)["c"], torch.full((4,), 7.0))
    model["b"] = torch.ones(3, 3)  # another shape
    fourth = mgr.save({"model": model}, epoch=1, step=4)
    meta = json.loads((Path(fourth) / "dcp_metadata.json").read_text())["state_dict_metadata"]["model.b"]
    assert meta["size"] == [3, 3] and meta["chunks"] == [[[0, 0], [3, 3]]], meta
    assert torch.equal(restored(mgr, fourth, model)["b"], torch.ones(3, 3))
    cached = SavePlanner._cached_metadata[mgr._plan_key]
    model["b"] = torch.ones(3, 3, dtype=torch.float64)  # another dtype only: DCP's own check misses it
    fifth = mgr.save({"model": model}, epoch=1, step=5)
    assert SavePlanner._cached_metadata[mgr._plan_key] is not cached
    meta = json.loads((Path(fifth) / "dcp_metadata.json").read_text())["state_dict_metadata"]["model.b"]
    assert meta["dtype"] == "torch.float64", meta
    mgr.close()
    assert mgr._plan_key not in SavePlanner._cached_metadata  # close drops this manager's plans


def test_two_managers_keep_their_own_plans(tmp_path: Path) -> None:
    runs = ShardedStore(str(tmp_path), prefix="run")
    best = ShardedStore(str(tmp_path), prefix="run-best")
    runs.save({"model": {"w": torch.ones(3)}}, epoch=1, step=1)
    best.save({"model": {"v": torch.zeros(2)}}, epoch=1, step=1)
    assert runs._plan_key != best._plan_key
    assert {runs._plan_key, best._plan_key} <= set(SavePlanner._cached_metadata)
    last = runs.save({"model": {"w": torch.ones(3) * 2}}, epoch=1, step=2)
    assert tensors(last) == ["model.w"]
    runs.close()
    best.close()


def test_forget_and_the_planner_key() -> None:
    planner = cached_planner("k-test")
    assert planner._cached_plans_key == "k-test" and planner._enable_plan_caching
    SavePlanner._cached_metadata["k-test"] = None  # type: ignore[assignment]
    forget("k-test")
    assert "k-test" not in SavePlanner._cached_metadata


def _plan(state: dict[str, torch.Tensor]) -> SavePlan:
    return create_default_local_save_plan(state, is_coordinator=False)


def test_spread_gives_the_largest_first_to_the_least_loaded_rank() -> None:
    # In plan order, four small tensors then a big one: a rank-by-rank greedy ends 6 vs 2 units;
    # largest first ends 4 vs 4.
    state = {f"s{i}": torch.zeros(256) for i in range(4)} | {"big": torch.zeros(1024)}
    kept = spread([_plan(state), _plan(state)])
    loads = [sum(item.tensor_storage_size() or 0 for item in plan.items) for plan in kept]
    assert loads == [4096, 4096], loads
    assert sorted(i.index.fqn for p in kept for i in p.items) == sorted(state)  # each written once
    alone = spread([_plan({"a": torch.zeros(8)}), _plan({"b": torch.zeros(8)})])  # not replicated: kept
    assert [[i.index.fqn for i in p.items] for p in alone] == [["a"], ["b"]]


def test_a_placeholder_planned_for_writing_fails_the_save_and_commits_nothing(tmp_path: Path) -> None:
    stand_in = Placeholders(pinned=False)
    state = {"model": {"w": torch.ones(4), "v": stand_in.like(torch.ones(3, 2))}}
    writer = PartWriter(str(tmp_path / "p-1_1.ckpt"))
    with pytest.raises(CheckpointException) as raised, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state, storage_writer=writer, planner=cached_planner("k-stand-in", stand_in.keys()), no_dist=True)
    forget("k-stand-in")
    (error,) = [e[0] if isinstance(e, tuple) else e for e in raised.value.failures.values()]
    assert isinstance(error, CheckpointWriteError)
    assert str(error) == ("model.v was planned on this rank but not staged (the plan changed after staging); "
                          "nothing was committed; the next save stages every tensor")
    assert not (tmp_path / "p-1_1.ckpt" / "manifest.json").exists()
