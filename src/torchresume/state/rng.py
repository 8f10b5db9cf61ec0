"""Capture and restore every random number generator a training step can touch."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def capture() -> dict[str, Any]:
    """Python, numpy, torch CPU and every CUDA device's RNG state."""
    return {"python": random.getstate(), "numpy": np.random.get_state(legacy=False),
            **capture_torch()}


def capture_torch() -> dict[str, Any]:
    """Only torch's generators (CPU and CUDA): about 1 us, cheap enough for every step.

    A training step (forward, backward, optimizer) draws only from these; python's
    and numpy's generators (64 us to read numpy's) are taken when a checkpoint is written.
    """
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(state["numpy"])
    # Loaded tensors may be views into a mapped file; the RNG wants its own storage.
    torch.set_rng_state(state["torch"].clone())
    if "cuda" in state and torch.cuda.is_available():
        saved = state["cuda"]
        if len(saved) != torch.cuda.device_count():
            import warnings
            warnings.warn(f"checkpoint has RNG state for {len(saved)} CUDA devices, this machine "
                          f"has {torch.cuda.device_count()}; restoring the common ones", stacklevel=2)
        for i, s in enumerate(saved[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s.clone(), i)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_deterministic(seed: int, threads: int = 1) -> None:
    """Seeded everything, deterministic kernels, a fixed thread count: bitwise-repeatable runs."""
    import os
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    seed_everything(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
