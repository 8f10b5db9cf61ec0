"""What a sharded async save stages: DTensors as their local shards, and only this rank's share.

``ShardStager`` is the save slot's stager for DCP state: ``stage_state`` copies a state into reused
host buffers (``staging.StagingBuffers``), a DTensor as its local shard rebuilt around the staged
copy. Once a save plan is cached, ``share_of`` names the tensors this rank's plan wrote, so the next
save stages only those (placeholders for the rest).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch.distributed.checkpoint.planner import SavePlanner
from torch.distributed.checkpoint.stateful import Stateful

from torchresume.log import log
from torchresume.snapshot import Snapshot
from torchresume.staging import StagingBuffers, is_stageable
from torchresume.state.tree import map_tensors


def _copy_leaves(node: Any) -> Any:
    """``node`` with every non-tensor leaf deep-copied (tensors kept): the snapshot of the rest of the state."""
    if isinstance(node, torch.Tensor):
        return node
    if isinstance(node, dict):
        return {k: _copy_leaves(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(_copy_leaves(v) for v in node)
    return copy.deepcopy(node)


class ShardStager:
    """The save slot's stager for DCP state: DTensors staged as their local shards (``stage_state``).

    ``share``: the positions of the tensors this rank's plan writes (None: every tensor), set by the
    manager before each save; ``last``: the snapshot of the save in flight.
    """

    def __init__(self) -> None:
        self.buffers = StagingBuffers()
        self.share: frozenset[int] | None = None
        self.last: Snapshot | None = None

    def snapshot(self, tree: Any, deferred: frozenset[int] = frozenset()) -> Snapshot:
        self.last = stage_state(self.buffers, tree, deferred, only=self.share)
        return self.last

    def release(self) -> None:
        self.buffers.release()
        self.last = None


def layout_key(node: Any) -> Any:
    """What a save plan depends on: the tree's keys and each tensor's shape, dtype, device and
    DTensor placement, never a value. Equal keys on every rank: the cached plan is used again."""
    from torch.distributed.tensor import DTensor

    if isinstance(node, DTensor):
        return "S", tuple(node.shape), node.dtype, node.placements, node.device_mesh, tuple(node.to_local().shape)
    if isinstance(node, torch.Tensor):
        return "T", tuple(node.shape), node.dtype, node.device.type, node.layout
    if isinstance(node, dict):
        return "D", tuple((k, layout_key(v)) for k, v in node.items())
    if isinstance(node, (list, tuple)):
        return "L", tuple(layout_key(v) for v in node)
    return "V"


def stage_state(buffers: StagingBuffers, state: Any, deferred: frozenset[int] = frozenset(),
                only: frozenset[int] | None = None) -> Snapshot:
    """A snapshot of ``state`` in ``buffers``: plain tensors copied, DTensors as their staged local shard.

    A top-level ``Stateful`` (a module, an optimizer) is replaced by its ``state_dict()`` first.
    ``only``: the positions of the plain tensors to stage (``StagingBuffers.snapshot``), placeholders
    for the rest; a DTensor's local shard is always staged (``from_local`` moves a tensor to the
    mesh's device, so a placeholder there would be copied into a real tensor of zeros).
    A DTensor is rebuilt around its staged local tensor with the same mesh, placements, global
    shape and stride (no collective), so DCP plans the snapshot exactly as it would the live state.
    """
    from torch.distributed.tensor import DTensor

    specs: list[tuple[Any, Any, Any, Any] | None] = []

    def unwrap(t: torch.Tensor) -> torch.Tensor:
        if isinstance(t, DTensor):
            specs.append((t.device_mesh, t.placements, t.size(), t.stride()))
            return t.to_local()
        specs.append(None)
        return t

    if isinstance(state, dict):  # DCP calls a top-level Stateful's state_dict(): now, not in the background
        state = {k: v.state_dict() if isinstance(v, Stateful) else v for k, v in state.items()}
    unwrapped = map_tensors(state, unwrap)
    if only is not None:
        only = only | _dense_positions(unwrapped, [spec is not None for spec in specs])
    snapshot = buffers.snapshot(unwrapped, deferred, only)
    spec_iter = iter(specs)

    def rewrap(t: torch.Tensor) -> torch.Tensor:
        spec = next(spec_iter)
        if spec is None:
            return t
        mesh, placements, size, stride = spec
        return DTensor.from_local(t, mesh, placements, run_check=False, shape=size, stride=stride)

    snapshot.tree = _copy_leaves(map_tensors(snapshot.tree, rewrap))  # the same buffers, rewrapped
    return snapshot


def _dense_positions(tree: Any, chosen: list[bool]) -> frozenset[int]:
    """The positions, as ``StagingBuffers.snapshot`` counts them (its stageable tensors in tree
    order), of the tensors of ``tree`` flagged in ``chosen`` (one flag per tensor, in tree order)."""
    tensors: list[torch.Tensor] = []
    map_tensors(tree, tensors.append)
    flags = [c for t, c in zip(tensors, chosen, strict=True) if is_stageable(t)]
    return frozenset(i for i, c in enumerate(flags) if c)


def written_tensors(planner: SavePlanner) -> list[torch.Tensor]:
    """The tensors (local shards) the finished plan of ``planner`` wrote on this rank, with those
    inside a value DCP writes as bytes (a tuple of tensors, e.g. Adam's tensor ``betas``)."""
    found: list[torch.Tensor] = []
    for item in planner.plan.items:  # type: ignore[attr-defined]
        map_tensors(planner.lookup_object(item.index), found.append)  # type: ignore[attr-defined]
    return found


def share_of(layout: Any, buffers: StagingBuffers, planner: SavePlanner) -> tuple[Any, frozenset[int]] | None:
    """What the next save with ``layout`` stages on this rank; None (everything) if it cannot be told.
    The save is committed by now: nothing here may raise."""
    try:
        return layout, buffers.positions_of(written_tensors(planner))
    except Exception as exc:  # a tensor without plain storage (sparse, a wrapper subclass)
        log.debug("staging every tensor at the next save: %s", exc)
        return None

__all__ = ["ShardStager", "layout_key", "share_of", "stage_state", "written_tensors"]
