"""state/rng.py: capture then restore gives the same next draws from every generator."""

from __future__ import annotations

import random

import numpy as np
import torch

from torchresume.state import rng


def _draws() -> tuple[float, float, list[float]]:
    return random.random(), float(np.random.rand()), torch.rand(4).tolist()


def test_restore_replays_python_numpy_and_torch() -> None:
    rng.seed_everything(123)
    _draws()
    state = rng.capture()
    first = _draws()
    _draws()  # move on
    rng.restore(state)
    assert _draws() == first


def test_capture_has_each_generator() -> None:
    state = rng.capture()
    assert {"python", "numpy", "torch"} <= set(state)
    assert isinstance(state["torch"], torch.Tensor)


def test_restore_survives_a_checkpoint_round_trip(tmp_path) -> None:
    from torchresume.files import read_checkpoint, write_checkpoint
    rng.seed_everything(7)
    state = rng.capture()
    first = _draws()
    path = str(tmp_path / "rng.ckpt")
    write_checkpoint(path, "tensors", {"rng": state})
    _draws()
    rng.restore(read_checkpoint(path).tree["rng"])
    assert _draws() == first


def test_capture_torch_is_only_torch() -> None:
    torch.manual_seed(5)
    state = rng.capture_torch()
    assert "python" not in state and "numpy" not in state
    a = torch.rand(3)
    torch.set_rng_state(state["torch"])
    assert torch.equal(torch.rand(3), a)


def test_seed_everything_is_repeatable() -> None:
    rng.seed_everything(42)
    a = _draws()
    rng.seed_everything(42)
    assert _draws() == a
    rng.seed_everything(43)
    assert _draws() != a
