"""The manager without a process group (one process), and its argument errors: fast, no torchrun."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from torchresume.distributed import ShardedStore
from torchresume.errors import CheckpointConfigError, CheckpointWriteError


def test_save_restore_without_process_group(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = nn.Linear(4, 3)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(2, 4)).sum().backward()
    opt.step()
    mgr = ShardedStore(str(tmp_path), prefix="solo", keep=1)
    assert mgr.restore({"model": net.state_dict()}) is None  # nothing saved yet
    first = mgr.save({"model": net.state_dict(), "optim": opt.state_dict()}, epoch=1, step=1,
                     rank_state={"position": 7, "rng": torch.get_rng_state()})
    saved = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    last = mgr.save({"model": net.state_dict()}, epoch=1, step=2)
    mgr.wait()  # retention deletes in the background, after the commit
    assert sorted(p.name for p in tmp_path.iterdir()) == ["solo-1_2.ckpt"]  # keep=1
    assert mgr.newest() == last != first
    fresh = nn.Linear(4, 3)
    state = {"model": fresh.state_dict()}
    info = mgr.restore(state)
    assert info is not None and (info.path, info.epoch, info.step, info.world_size) == (last, 1, 2, 1)
    assert info.rank_states == [None]
    assert all(torch.equal(state["model"][k], saved[k] + 1.0) for k in saved)


def test_rank_state_that_cannot_be_stored_is_one_typed_error(tmp_path: Path) -> None:
    mgr = ShardedStore(str(tmp_path))
    with pytest.raises(CheckpointWriteError, match=r"sharded save failed \(rank 0: TreeError: cannot save set"):
        mgr.save({"model": {"w": torch.ones(2)}}, epoch=1, step=1, rank_state={"seen": {1, 2}})
    assert mgr.newest() is None
    assert list(tmp_path.iterdir()) == []  # the failed save's parts were removed


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"directory": ""}, "directory must be a non-empty path or URL, got ''"),
    ({"directory": "d", "prefix": "a-b"}, "prefix must be a non-empty str without '/' or '-', got 'a-b'"),
    ({"directory": "d", "keep": 0}, r"keep must be an int >= 1 \(checkpoints to keep\), got 0"),
])
def test_constructor_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(CheckpointConfigError, match=message):
        ShardedStore(**kwargs)  # type: ignore[arg-type]


def test_save_argument_errors(tmp_path: Path) -> None:
    mgr = ShardedStore(str(tmp_path))
    with pytest.raises(CheckpointConfigError, match="state must be a dict of state_dicts .*got list"):
        mgr.save([torch.ones(1)], epoch=1, step=1)  # type: ignore[arg-type]
    with pytest.raises(CheckpointConfigError, match="step must be an int >= 0, got -1"):
        mgr.save({"w": torch.ones(1)}, epoch=1, step=-1)


def test_saving_a_committed_step_again_keeps_the_committed_checkpoint(tmp_path: Path, capsys) -> None:
    """A second save of the same (epoch, step) never deletes the good checkpoint already there."""
    net = nn.Linear(4, 3)
    mgr = ShardedStore(str(tmp_path), prefix="same", keep=2)
    path = mgr.save({"model": net.state_dict()}, epoch=1, step=3)
    saved = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        net.weight.add_(5.0)
    assert mgr.save({"model": net.state_dict()}, epoch=1, step=3) == path
    assert f"{path} is already committed (this step was saved before); keeping it" in capsys.readouterr().out
    state = {"model": nn.Linear(4, 3).state_dict()}
    assert mgr.restore(state) is not None
    assert all(torch.equal(state["model"][k], saved[k]) for k in saved)


def test_an_unfinished_save_at_the_same_name_is_replaced(tmp_path: Path) -> None:
    net = nn.Linear(4, 3)
    mgr = ShardedStore(str(tmp_path), prefix="left", keep=2)
    leftover = tmp_path / "left-1_3.ckpt"
    leftover.mkdir()
    (leftover / "shard-0-0.safetensors").write_bytes(b"half a part")
    path = mgr.save({"model": net.state_dict()}, epoch=1, step=3)
    part = leftover / "shard-0-0.safetensors"
    assert not part.exists() or part.read_bytes() != b"half a part"
    assert mgr.newest() == path
