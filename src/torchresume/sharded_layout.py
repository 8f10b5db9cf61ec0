"""The sharded layout of CheckpointManager: one DCP checkpoint directory per save, every rank writing.

The manager picks it under torchrun (``layout="sharded"`` asks for it in one process too).
Weights and optimizer state go through DCP (``state/sharded.py``: the DDP replica once, FSDP2
shards by their owners); every other entry of the manager's registry, the RNG streams and
callbacks are this rank's own part of the same checkpoint: the flat tree a one-process file
holds, minus weights and optimizer, so a one-process reader (``files/sharded_as_one.py``) sees
the file layout's tree. Saving, listing and loading are ``distributed.ShardedStore``'s; this
module maps the manager's state onto it. Every method is collective.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from torch import nn

from torchresume.distributed.manager import ShardedStore
from torchresume.errors import CheckpointConfigError
from torchresume.files.sharded_reader import is_sharded
from torchresume.log import log
from torchresume.retention import RetentionPolicy
from torchresume.state.registry import StateRegistry, capture_tree, restore_tree
from torchresume.state.sharded import load_model_state, model_state, rank_registry
from torchresume.state.stateful import Stateful
from torchresume.world import World


def refuse_file_options(*, file_format: str | None, saved_network: Any, write_mb_per_s: float | None,
                        crc_check: bool, enc_mode: str) -> None:
    """The options a sharded checkpoint cannot honour, refused before anything is written."""
    refused = [f"{name}={value!r}" for name, value, default in (
        ("file_format", file_format, None), ("write_mb_per_s", write_mb_per_s, None), ("crc_check", crc_check, False),
        ("enc_mode", enc_mode, "AES-GCM")) if value != default]
    if saved_network is not None:
        refused.append("saved_network=<a module>")
    if refused:
        raise CheckpointConfigError(
            f"{', '.join(refused)}: not available with sharded checkpoints (the layout under torchrun); "
            "drop the option, or save one file per process with layout='file' in a one-process job")


class ShardedLayout:
    """Collective saves and restores of a manager's state (``model``, ``optimizer`` and the entries
    of ``registry``) as sharded checkpoints; ``store`` options as ``ShardedStore``'s."""

    def __init__(self, directory: str, *, model: nn.Module | None, optimizer: Any, registry: StateRegistry,
                 world: World, policies: Sequence[RetentionPolicy], **store: Any) -> None:
        if model is None:
            raise CheckpointConfigError("a sharded checkpoint (under torchrun) needs model=: DCP writes its weights "
                                        "and the optimizer's state keyed by parameter name")
        self.model, self.optimizer, self.world = model, optimizer, world
        self.registry = rank_registry(registry)
        self.store = ShardedStore(directory, **store)
        self.store.retention = list(policies)  # none: keep everything

    @staticmethod
    def owns(path: str) -> bool:
        """Whether ``path`` is a sharded checkpoint (read here, collectively) rather than one file."""
        return is_sharded(path)

    def save(self, epoch: int, step: int, global_step: int, *, breakpoint: bool, info: dict[str, Any],
             append: dict[str, Any] | None, callbacks: dict[str, Any] | None,
             rng_state: dict[str, Any] | None, sampler_state: dict[str, Any] | None,
             on_busy: str | None) -> str | None:
        own = capture_tree(None, self.registry, callbacks=callbacks, rng_state=rng_state,
                           sampler_state=sampler_state)
        full_info = {"global_step": global_step, "breakpoint": breakpoint, "time": time.time(),
                     "world_size": self.world.size, **_jsonable(info)}
        return self.store.save(model_state(self.model, self.optimizer), epoch, step, rank_state=own,
                               info=full_info, append=append, on_busy=on_busy, breakpoint=breakpoint)

    def restore(self, path: str | None, callbacks: dict[str, Stateful] | None) -> dict[str, Any] | None:
        """The newest committed sharded checkpoint that loads (or the one at ``path``) into the live
        objects; None when there is none. Each rank takes back its own old part (RNG included); a
        rank the saving job did not have takes old rank 0's, keeping its own RNG."""
        assert self.model is not None
        state = model_state(self.model, self.optimizer)
        found = self.store.restore(state, path=path)
        if found is None:
            return None
        load_model_state(self.model, self.optimizer, state)
        own = found.rank_state if self.world.rank < found.world_size else None
        parts = own if own is not None else dict(found.rank_states[0] or {})
        lacking = restore_tree(parts, found.path, None, self.registry, callbacks=callbacks,
                               restore_rng=own is not None)
        if found.world_size != self.world.size:
            log.info("resumed at %d ranks from a checkpoint of %d ranks: rank r < %d continues old rank r's "
                     "RNG streams, any other keeps its seed", self.world.size, found.world_size, found.world_size)
        return {**found.info, "path": found.path, "lacking": lacking}

    def close(self) -> None:
        self.store.close()


def _jsonable(info: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``info`` a manifest can hold (JSON); others (a tensor metric) are left out."""
    return {k: v for k, v in info.items() if _json_ok(v)}


def _json_ok(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


__all__ = ["ShardedLayout", "refuse_file_options"]
