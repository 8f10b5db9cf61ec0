"""The training state in the sharded layout: what DCP writes and what each rank keeps for itself.

Weights and optimizer state go through DCP, keyed by parameter name at any world size (the DDP
replica written once, FSDP2 shards by their owners): ``model_state`` / ``load_model_state``.
Everything else a training run resumes (scheduler, sampler, scaler, user Statefuls, RNG streams,
callbacks) is the same flat tree a one-process file holds (``registry.capture_tree``) without the
weights and the optimizer: each rank's own part of the checkpoint (``rank_registry``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from torchresume.state.registry import StateRegistry

OPTIMIZER = "optimizer"  # the registry entry DCP writes instead of the rank part


def model_state(network: nn.Module, optimizer: Any) -> dict[str, Any]:
    """What DCP writes: the model and the optimizer, keyed by parameter name (any world size)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict
    optimizers = (optimizer,) if optimizer is not None else ()
    model_sd, optim_sd = get_state_dict(network, optimizers)
    return {"model": model_sd, "optim": optim_sd} if optimizers else {"model": model_sd}


def load_model_state(network: nn.Module, optimizer: Any, state: dict[str, Any]) -> None:
    """Put ``state`` (``model_state``'s tree, loaded in place by DCP) back into the live objects."""
    from torch.distributed.checkpoint.state_dict import set_state_dict
    optimizers = (optimizer,) if optimizer is not None else ()
    set_state_dict(network, optimizers, model_state_dict=state["model"], optim_state_dict=state.get("optim", {}))


def rank_registry(registry: StateRegistry) -> StateRegistry:
    """``registry`` without the optimizer: the entries a rank keeps in its own part."""
    own = StateRegistry()
    for entry in registry:
        if entry.name != OPTIMIZER:
            own.register(entry.name, entry.obj, required=entry.required)
    return own


__all__ = ["load_model_state", "model_state", "rank_registry"]
