"""staging.py: host buffers reused while the state's layout holds, re-allocated when it changes."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from torchresume.staging import StagingBuffers


def _state(n: int = 3, size: int = 1000) -> dict[str, object]:
    return {"model": {f"w{i}": torch.randn(size, requires_grad=True) for i in range(n)},
            "optimizer": {"state": {0: {"step": torch.tensor(5.0)}}, "lr": 0.1},
            "ids": [torch.arange(10), 7, "text"]}


def _ptrs(tree: dict[str, object]) -> list[int]:
    out: list[int] = []

    def walk(node: object) -> None:
        if isinstance(node, torch.Tensor):
            out.append(node.data_ptr())
        elif isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, (list, tuple)):
            for v in node:
                walk(v)
    walk(tree)
    return out


def test_a_staged_copy_equals_the_state_and_is_independent_of_it() -> None:
    state = _state()
    staged = StagingBuffers().stage(state)
    model = state["model"]
    assert isinstance(model, dict)
    for name, t in model.items():
        assert torch.equal(staged["model"][name], t.detach())
        assert not staged["model"][name].requires_grad
    with torch.no_grad():
        model["w0"].add_(1.0)  # training goes on ...
    assert not torch.equal(staged["model"]["w0"], model["w0"].detach())  # ... the snapshot does not move
    assert staged["optimizer"]["lr"] == 0.1
    assert staged["ids"][1:] == [7, "text"]
    assert set(_ptrs(staged)).isdisjoint(_ptrs(state))


def test_buffers_are_reused_while_the_layout_holds() -> None:
    buffers = StagingBuffers()
    state = _state()
    first = _ptrs(buffers.stage(state))
    with torch.no_grad():
        state["model"]["w1"].mul_(3.0)  # type: ignore[index]
    second = buffers.stage(state)
    assert _ptrs(second) == first
    assert buffers.allocations == 1
    assert torch.equal(second["model"]["w1"], state["model"]["w1"].detach())  # type: ignore[index]


def test_a_changed_shape_or_dtype_reallocates_and_logs_at_debug(caplog) -> None:
    buffers = StagingBuffers()
    state = _state()
    buffers.stage(state)
    state["model"]["w2"] = torch.randn(2000)  # type: ignore[index]
    caplog.set_level(logging.DEBUG, logger="torchresume")
    logger = logging.getLogger("torchresume")
    logger.addHandler(caplog.handler)  # the torchresume logger does not propagate
    try:
        staged = buffers.stage(state)
        state["model"]["w0"] = torch.randn(1000, dtype=torch.float64)  # type: ignore[index]
        staged = buffers.stage(state)
    finally:
        logger.removeHandler(caplog.handler)
    assert buffers.allocations == 3
    assert staged["model"]["w0"].dtype == torch.float64
    assert staged["model"]["w2"].shape == (2000,)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(lines) == 2
    assert lines[0].startswith("staging buffers allocated for 5 tensors")


def test_non_contiguous_tensors_are_staged_contiguous() -> None:
    t = torch.randn(30, 40).t()
    staged = StagingBuffers().stage({"t": t})
    assert staged["t"].is_contiguous()
    assert torch.equal(staged["t"], t)


def test_release_frees_and_the_next_stage_allocates_again() -> None:
    buffers = StagingBuffers()
    buffers.stage(_state())
    assert buffers.nbytes > 3 * 4000
    buffers.release()
    assert buffers.nbytes == 0
    buffers.stage(_state())
    assert buffers.allocations == 2


def test_numpy_and_scalars_pass_through_unchanged() -> None:
    arr = np.arange(4)
    staged = StagingBuffers().stage({"a": arr, "n": None, "f": 1.5})
    assert staged == {"a": arr, "n": None, "f": 1.5}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (the CUDA branch is untested here)")
def test_cuda_tensors_stage_into_pinned_memory() -> None:
    t = torch.randn(1 << 20, device="cuda")
    staged = StagingBuffers().stage({"t": t})
    assert staged["t"].is_pinned()
    assert torch.equal(staged["t"], t.cpu())
