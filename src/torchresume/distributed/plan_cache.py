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
or removed, another shape, dtype, placement or chunk, a non-tensor value added or removed; DCP
2.13 compares names, offsets and sizes only, so ``CachedPlanner`` also compares each tensor's
properties: a dtype change alone would otherwise commit the old dtype in the metadata), in
which case the coordinator merges the changed plans and plans again; a new process (a restart
or another world size) starts empty. Values never do: plans name tensors, not their contents.

Stage only what is written: a replicated tensor (what DDP holds: the same on every rank) is written by
one rank. ``spread`` gives each to the rank with the fewest bytes planned so far, largest first, so
the ranks write about 1/W of the replica each. An async save then stages on each rank only the
tensors its cached plan writes (the manager's ``share``) and hands the planner placeholders for the
rest (``staging.Placeholders``): same shape, dtype and layout, so the local plan equals the cached
one and the cached final plan is used. If a plan changed anyway and a rank was given a tensor it
did not stage, ``resolve_data`` refuses to write the placeholder: that save fails on every rank,
nothing is committed, and the next save stages everything.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
from collections import defaultdict
from typing import Any

import torch
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex
from torch.distributed.checkpoint.planner import SavePlan, SavePlanner, WriteItem, WriteItemType

from torchresume.errors import CheckpointWriteError
from torchresume.state.tree import map_tensors

_CACHES = ("_cached_save_plan", "_cached_all_plans", "_cached_global_plan", "_cached_metadata",
           "_cached_final_save_plan")
_keys = itertools.count()
UNCHANGED = ()  # an unchanged plan on the wire


def new_key() -> str:
    """A key of this process for one manager's cached plans."""
    return f"torchresume-plan-{next(_keys)}"


class CachedPlanner(DefaultSavePlanner):
    """DCP's default save planner with plan caching; the metadata it returns is a shallow copy,
    replicated writes are ``spread`` over the ranks, and a placeholder is never written.

    An unchanged plan travels as ``()`` (4 bytes pickled) in DCP's gather and scatter, not as DCP's
    empty ``SavePlan([], usable=False)`` (124 bytes); the planner maps it back on either side.
    """

    unstaged: frozenset[int] = frozenset()  # data addresses of this rank's placeholders

    def create_local_plan(self) -> SavePlan:
        plan = super().create_local_plan()
        if plan.usable:
            return plan
        cached = SavePlanner._cached_save_plan.get(self._cached_plans_key)
        if cached is not None and _properties(self.plan) != _properties(cached):
            self._pending_local_plan = self.plan  # as DCP does for a changed plan: cached once planned
            return self.plan  # DCP saw it unchanged (it ignores dtypes): sent in full, planned again
        return UNCHANGED  # type: ignore[return-value]

    def transform_object(self, write_item: WriteItem, object: Any) -> Any:
        if write_item.type == WriteItemType.BYTE_IO:  # torch.save writes a view's whole storage: the
            object = map_tensors(object, torch.clone)  # staging slab, for a tuple of staged tensors
        return super().transform_object(write_item, object)

    def _dedup_save_plans(self, all_plans: list[SavePlan]) -> list[SavePlan]:
        return spread(all_plans)

    def resolve_data(self, write_item: WriteItem) -> torch.Tensor | io.BytesIO:
        self._check_staged(write_item)
        return super().resolve_data(write_item)

    def resolve_value(self, write_item: WriteItem) -> Any:
        """A non-tensor value itself (the part writer stores it as typed JSON, not as DCP's bytes)."""
        self._check_staged(write_item)
        return self.lookup_object(write_item.index)

    def _check_staged(self, write_item: WriteItem) -> None:
        if self.unstaged:  # the tensor, or those in a non-tensor value (a tuple of tensors)
            tensors: list[torch.Tensor] = []
            map_tensors(self.lookup_object(write_item.index), tensors.append)
            if any(t.numel() and t.data_ptr() in self.unstaged for t in tensors):
                raise CheckpointWriteError(
                    f"{write_item.index.fqn} was planned on this rank but not staged (the plan changed after "
                    "staging); nothing was committed; the next save stages every tensor")

    def create_global_plan(self, all_plans: list[SavePlan]) -> tuple[list[SavePlan], Metadata]:
        plans, metadata = super().create_global_plan([_unwire(p) for p in all_plans])
        wire = [p if p.usable else UNCHANGED for p in plans]
        return wire, dataclasses.replace(metadata)  # type: ignore[return-value]  # the writer may empty this copy

    def finish_plan(self, new_plan: SavePlan) -> SavePlan:
        return super().finish_plan(_unwire(new_plan))


def _unwire(plan: SavePlan | tuple[()]) -> SavePlan:
    return SavePlan([], usable=False) if plan == UNCHANGED else plan  # type: ignore[return-value]


def _properties(plan: SavePlan) -> list[object]:
    """Each write's tensor properties (dtype, layout, ...), which DCP's plan comparison leaves out."""
    return [item.tensor_data.properties if item.tensor_data is not None else None for item in plan.items]


def cached_planner(key: str, unstaged: frozenset[int] = frozenset()) -> CachedPlanner:
    """A save planner with plan caching under ``key``; ``unstaged``: this rank's placeholders."""
    planner = CachedPlanner(enable_plan_caching=True)
    planner._cached_plans_key = key
    planner.unstaged = unstaged
    return planner


def spread(plans: list[SavePlan]) -> list[SavePlan]:
    """Each write planned by several ranks kept by one: the largest first, each by the rank holding
    it with the fewest bytes kept so far (the lowest such rank on a tie)."""
    holders: dict[MetadataIndex, list[int]] = defaultdict(list)
    items: dict[MetadataIndex, WriteItem] = {}
    for rank, plan in enumerate(plans):
        for item in plan.items:
            holders[item.index].append(rank)
            items.setdefault(item.index, item)
    load = [0] * len(plans)
    keeper: dict[MetadataIndex, int] = {}
    for index in sorted(items, key=lambda i: -(items[i].tensor_storage_size() or 1)):  # stable: plan order on ties
        rank = min(holders[index], key=lambda r: (load[r], r))
        keeper[index] = rank
        load[rank] += items[index].tensor_storage_size() or 1
    return [dataclasses.replace(plan, items=[i for i in plan.items if keeper[i.index] == rank])
            for rank, plan in enumerate(plans)]


def forget(key: str) -> None:
    """Drop every plan cached under ``key`` (the next save plans from scratch)."""
    for name in _CACHES:
        cache = getattr(SavePlanner, name, None)
        if isinstance(cache, dict):
            cache.pop(key, None)


__all__ = ["CachedPlanner", "cached_planner", "forget", "new_key", "spread"]
