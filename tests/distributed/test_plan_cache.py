"""Plan once (issue 23, item 3): steady saves reuse the cached plan and metadata, a changed state plans
again, and every checkpoint still holds what was saved. One process, no torchrun: the caching path of
DCP's planner runs the same without a process group (a 32-rank run is benchmarks/distributed_scale.py)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.distributed.checkpoint.planner import SavePlanner

from torchresume.distributed import DistributedCheckpointManager
from torchresume.distributed.plan_cache import cached_planner, forget


def tensors(path: str) -> list[str]:
    return sorted(json.loads((Path(path) / "dcp_metadata.json").read_text())["state_dict_metadata"])


def restored(mgr: DistributedCheckpointManager, path: str, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = {"model": {k: torch.zeros_like(v) for k, v in like.items()}}
    assert mgr.restore(state, path=path) is not None
    return state["model"]


def test_steady_saves_reuse_the_plan_and_a_new_tensor_plans_again(tmp_path: Path) -> None:
    mgr = DistributedCheckpointManager(str(tmp_path), prefix="p", keep=10)
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
    mgr.close()
    assert mgr._plan_key not in SavePlanner._cached_metadata  # close drops this manager's plans


def test_two_managers_keep_their_own_plans(tmp_path: Path) -> None:
    runs = DistributedCheckpointManager(str(tmp_path), prefix="run")
    best = DistributedCheckpointManager(str(tmp_path), prefix="run-best")
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
