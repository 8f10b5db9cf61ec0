"""Plan once: DCP's save-plan caching, kept per manager.

A steady save (the same tensors, shapes, dtypes and placements as the previous one) need not plan
again. DCP's ``DefaultSavePlanner(enable_plan_caching=True)`` keeps, per key, each rank's last
local plan, and on the coordinator every rank's plan, the deduplicated global plan and the
metadata: a rank whose local plan is unchanged sends an empty plan, the coordinator reuses its
global plan and metadata and scatters empty plans back, and each rank writes its cached final
plan. The collectives stay the same in number, their payload shrinks to a few bytes per rank.

DCP's coordinator also broadcasts the metadata it committed back to every rank as ``dcp.save``'s
result, (W - 1) copies of it out of rank 0 per save. The manager does not use that result: its
planner hands the writer a shallow copy of the metadata, which ``PartWriter`` (``lean=True``) empties
once it is encoded and committed, so the broadcast carries an empty one; the cached metadata is
never touched.

The caches are class-level dicts of DCP's ``SavePlanner``, keyed by the planner's class name by
default: two managers of one process (a run's checkpoints and its best copies) would evict each
other. Each manager gets its own key here, and ``forget`` drops its entries (``close``).

What invalidates a cached plan: any rank's local plan differing from its last one (a tensor added
or removed, another shape, dtype, placement or chunk, a non-tensor value added or removed), in
which case the coordinator merges the changed plans and plans again; a new process (a restart
or another world size) starts empty. Values never do: plans name tensors, not their contents.
"""

from __future__ import annotations

import dataclasses
import itertools

from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.planner import SavePlan, SavePlanner

_CACHES = ("_cached_save_plan", "_cached_all_plans", "_cached_global_plan", "_cached_metadata",
           "_cached_final_save_plan")
_keys = itertools.count()
UNCHANGED = ()  # an unchanged plan on the wire


def new_key() -> str:
    """A key of this process for one manager's cached plans."""
    return f"torchresume-plan-{next(_keys)}"


class CachedPlanner(DefaultSavePlanner):
    """DCP's default save planner with plan caching; the metadata it returns is a shallow copy.

    An unchanged plan travels as ``()`` (4 bytes pickled) in DCP's gather and scatter, not as DCP's
    empty ``SavePlan([], usable=False)`` (124 bytes); the planner maps it back on either side.
    """

    def create_local_plan(self) -> SavePlan:
        plan = super().create_local_plan()
        return plan if plan.usable else UNCHANGED  # type: ignore[return-value]

    def create_global_plan(self, all_plans: list[SavePlan]) -> tuple[list[SavePlan], Metadata]:
        plans, metadata = super().create_global_plan([_unwire(p) for p in all_plans])
        wire = [p if p.usable else UNCHANGED for p in plans]
        return wire, dataclasses.replace(metadata)  # type: ignore[return-value]  # the writer may empty this copy

    def finish_plan(self, new_plan: SavePlan) -> SavePlan:
        return super().finish_plan(_unwire(new_plan))


def _unwire(plan: SavePlan | tuple[()]) -> SavePlan:
    return SavePlan([], usable=False) if plan == UNCHANGED else plan  # type: ignore[return-value]


def cached_planner(key: str) -> CachedPlanner:
    """A save planner with plan caching under ``key``."""
    planner = CachedPlanner(enable_plan_caching=True)
    planner._cached_plans_key = key
    return planner


def forget(key: str) -> None:
    """Drop every plan cached under ``key`` (the next save plans from scratch)."""
    for name in _CACHES:
        cache = getattr(SavePlanner, name, None)
        if isinstance(cache, dict):
            cache.pop(key, None)


__all__ = ["CachedPlanner", "cached_planner", "forget", "new_key"]
