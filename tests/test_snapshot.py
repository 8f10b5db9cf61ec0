"""Overlapped staging (snapshot.py, save_slot.py): the copy of what only ``optimizer.step`` changes
runs after ``save()`` returned, and a checkpoint still holds the state of the step it names, bitwise."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

import torchresume as tr
from torchresume import CheckpointManager
from torchresume.errors import CheckpointConfigError
from torchresume.files import read_checkpoint
from torchresume.snapshot import PIECE_BYTES, Snapshot, pieces, storage_key
from torchresume.staging import StagingBuffers


def _net() -> nn.Module:
    torch.manual_seed(0)
    # 4 MiB of weights (more than one piece), and a BatchNorm whose buffers the forward pass writes
    return nn.Sequential(nn.Linear(1024, 1024), nn.BatchNorm1d(1024), nn.ReLU(), nn.Linear(1024, 4))


def _step(net: nn.Module, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad()
    net(torch.randn(8, 1024)).pow(2).mean().backward()
    opt.step()


def _held_copies(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Hold the background thread's deferred copies until released: only a gate can make them."""
    release = threading.Event()
    real = Snapshot.copy_rest

    def held(self: Snapshot) -> None:
        release.wait(30)
        real(self)
    monkeypatch.setattr(Snapshot, "copy_rest", held)
    return release


def _expected(net: nn.Module, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {k: v.clone() for k, v in net.state_dict().items()}
    for i, state in opt.state_dict()["state"].items():
        out.update({f"optimizer.state.{i}.{k}": v.clone() for k, v in state.items() if isinstance(v, torch.Tensor)})
    return out


def _assert_holds(path: str, expected: dict[str, torch.Tensor]) -> None:
    ckpt = tr.load_checkpoint(path)
    state = read_checkpoint(path).tree.get("optimizer", {}).get("state")
    for name, value in expected.items():
        if name.startswith("optimizer.state."):
            _, _, i, key = name.split(".", 3)
            got = state[int(i)][key]
        else:
            got = ckpt[name]
        assert torch.equal(got, value), name


def test_overlap_without_async_save_is_refused_with_what_to_do(tmp_path) -> None:
    with pytest.raises(CheckpointConfigError) as info:
        CheckpointManager(str(tmp_path), model=_net(), overlap=True)
    assert str(info.value) == (
        "overlap=True needs async_save=True: it overlaps the copy of a background save with the next "
        "training step, and a synchronous save has no copy; pass async_save=True too, or drop overlap")


def test_the_step_right_after_save_waits_and_the_checkpoint_holds_the_named_step(tmp_path, monkeypatch) -> None:
    net = _net()
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    _step(net, opt)
    mgr = CheckpointManager(str(tmp_path), model=net, optimizer=opt, async_save=True, overlap=True)
    try:
        release = _held_copies(monkeypatch)  # the background copy cannot run: the step must make it
        expected = _expected(net, opt)
        path = mgr.save(1, 1)
        assert path is not None and mgr.slot._staging is not None  # save() returned, weights not copied yet
        _step(net, opt)  # forward writes BatchNorm's stats; the step changes weights and moments
        assert not torch.equal(net[0].weight, expected["0.weight"])
        assert not torch.equal(net[1].running_mean, expected["1.running_mean"])
        release.set()
        mgr.wait()
        _assert_holds(path, expected)
    finally:
        mgr.close()


def test_the_background_copy_completes_without_a_step_and_steps_stay_exact(tmp_path) -> None:
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    mgr = CheckpointManager(str(tmp_path), model=net, optimizer=opt, async_save=True, overlap=True, keep=10)
    try:
        saved = []
        for step in range(1, 6):
            _step(net, opt)
            saved.append((mgr.save(1, step), _expected(net, opt)))
        mgr.wait()
        for path, expected in saved:
            assert path is not None
            _assert_holds(path, expected)
    finally:
        mgr.close()


def test_a_manual_edit_after_wait_staged_is_not_in_the_checkpoint(tmp_path, monkeypatch) -> None:
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    mgr = CheckpointManager(str(tmp_path), model=net, optimizer=opt, async_save=True, overlap=True)
    try:
        release = _held_copies(monkeypatch)
        expected = _expected(net, opt)
        path = mgr.save(1, 1)
        mgr.wait_staged()  # the documented call before changing weights other than by optimizer.step
        with torch.no_grad():
            net[0].weight.zero_()
        release.set()
        mgr.wait()
        assert path is not None
        _assert_holds(path, expected)
    finally:
        mgr.close()


def test_an_optimizer_not_guarded_has_its_tensors_copied_before_save_returns(tmp_path, monkeypatch) -> None:
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    mgr = CheckpointManager(str(tmp_path), model=net, async_save=True, overlap=True)  # no optimizer given
    try:
        release = _held_copies(monkeypatch)
        expected = {k: v.clone() for k, v in net.state_dict().items()}
        path = mgr.save(1, 1)
        assert mgr.slot._staging is None  # nothing deferred: the step below need not wait
        _step(net, opt)
        release.set()
        mgr.wait()
        assert path is not None
        _assert_holds(path, expected)
    finally:
        mgr.close()


def test_close_removes_the_step_hook(tmp_path) -> None:
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    hooks_before = len(opt._optimizer_step_pre_hooks)
    mgr = CheckpointManager(str(tmp_path), model=net, optimizer=opt, async_save=True, overlap=True)
    mgr.guard_optimizer(opt)  # twice: one hook
    assert len(opt._optimizer_step_pre_hooks) == hooks_before + 1
    mgr.close()
    assert len(opt._optimizer_step_pre_hooks) == hooks_before


def test_deferred_copies_are_cut_into_pieces_that_cover_the_tensor() -> None:
    live = torch.randn(PIECE_BYTES // 4 * 2 + 5)
    buffer = torch.empty_like(live)
    parts = pieces(buffer, live)
    assert len(parts) == 3 and sum(b.numel() for b, _ in parts) == live.numel()
    for b, source in parts:
        b.copy_(source)
    assert torch.equal(buffer, live)
    strided = torch.randn(64, 64).t()  # not contiguous: one copy
    assert len(pieces(torch.empty(64, 64), strided)) == 1


def test_a_snapshot_defers_only_the_storages_named() -> None:
    weight, stats = torch.randn(1000), torch.randn(10)
    weight_then, stats_then = weight.clone(), stats.clone()
    snapshot = StagingBuffers().snapshot({"w": weight, "bn": stats}, frozenset({storage_key(weight)}))
    assert snapshot.deferred
    assert torch.equal(snapshot.tree["bn"], stats)  # copied before snapshot() returned
    stats.add_(1.0)
    snapshot.gate()  # the training thread copies what is left
    weight.add_(1.0)
    snapshot.copy_rest()  # nothing left: returns at once
    assert torch.equal(snapshot.tree["w"], weight_then)
    assert torch.equal(snapshot.tree["bn"], stats_then)


def test_a_sharded_save_defers_too_and_holds_the_named_step(tmp_path, monkeypatch) -> None:
    from torchresume.distributed import ShardedStore

    net = _net()
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    _step(net, opt)
    mgr = ShardedStore(str(tmp_path), prefix="net", async_save=True, overlap=True)
    mgr.guard_optimizer(opt)
    try:
        release = _held_copies(monkeypatch)
        expected = {k: v.clone() for k, v in net.state_dict().items()}
        mgr.save({"model": net.state_dict(), "optim": opt.state_dict()}, epoch=1, step=1)
        assert mgr.slot._staging is not None  # the parameters' copy was left for later
        _step(net, opt)
        release.set()
        mgr.wait()
        state = {"model": _net().state_dict()}
        assert mgr.restore(state) is not None
        for name, value in expected.items():
            assert torch.equal(state["model"][name], value), name
    finally:
        mgr.close()
