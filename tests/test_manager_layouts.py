"""manager.py: one CheckpointManager, two layouts (one file per save, or a sharded checkpoint).

Under torchrun the manager picks the sharded layout itself (tests/fault/test_readme_loop_torchrun.py
runs it in a real 2-rank job); here it is asked for in one process (``layout="sharded"``, no
process group: DCP works as one rank), which runs the same code on one rank. What one layout
writes, the other reads.
"""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import torchresume as tr
from torchresume.errors import CheckpointConfigError
from torchresume.manager import choose_layout
from torchresume.world import World


class Counter:
    """A user's own Stateful: it must come back in either layout."""

    def __init__(self) -> None:
        self.seen = 0

    def state_dict(self) -> dict[str, int]:
        return {"seen": self.seen}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seen = int(state["seen"])


def _trained(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.StepLR]:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1))
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2)
    for _ in range(3):
        loss = net(torch.randn(8, 4)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net, opt, sched


def _manager(directory: str, layout: str | None, seed: int = 0, **kw: object) -> tuple[tr.CheckpointManager, Counter]:
    net, opt, sched = _trained(seed)
    counter = Counter()
    mgr = tr.CheckpointManager(directory, model=net, optimizer=opt, scheduler=sched, prefix="run",
                               extra={"counter": counter}, layout=layout, **kw)
    return mgr, counter


@pytest.mark.parametrize(("writer", "reader"), [("sharded", "sharded"), ("sharded", "file"), ("file", "sharded")])
def test_what_one_layout_writes_the_other_restores_exactly(tmp_path, writer: str, reader: str) -> None:
    saver, counter = _manager(str(tmp_path), writer)
    counter.seen = 96
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    path = saver.save(epoch=2, step=6, global_step=30)
    saver.close()
    expected = (random.random(), np.random.rand(), torch.rand(1))
    assert path is not None and path.endswith("run-2_6.ckpt")

    loader, restored = _manager(str(tmp_path), reader, seed=1)
    info = loader.restore_latest()
    loader.close()
    assert info is not None and (info["epoch"], info["step"], info["global_step"]) == (2, 6, 30)
    assert info["lacking"] == [] and info["path"] == path
    assert restored.seen == 96 and loader.global_step == 30
    for mine, theirs in zip(loader.model.state_dict().values(), saver.model.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs)
    assert loader.optimizer is not None and saver.optimizer is not None
    assert str(loader.optimizer.state_dict()) == str(saver.optimizer.state_dict())
    assert loader.scheduler.state_dict() == saver.scheduler.state_dict()
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected  # every RNG stream came back


@pytest.mark.parametrize("layout", ["file", "sharded"])
def test_retention_and_breakpoint_names_are_the_same_in_both_layouts(tmp_path, layout: str) -> None:
    mgr, _ = _manager(str(tmp_path), layout, keep=2)
    for step in (1, 2, 3):
        mgr.save(epoch=1, step=step)
    broke = mgr.save_breakpoint(1, 4, reason=RuntimeError("x"))
    mgr.close()
    assert broke.endswith("run-1_4_breakpoint.ckpt")
    names = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("run-"))
    assert names == ["run-1_2.ckpt", "run-1_3.ckpt", "run-1_4_breakpoint.ckpt"]  # a breakpoint is kept apart


def test_keep_none_keeps_every_sharded_checkpoint(tmp_path) -> None:
    mgr, _ = _manager(str(tmp_path), "sharded", keep=None)
    for step in (1, 2, 3):
        mgr.save(epoch=1, step=step)
    mgr.close()
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("run-")]) == 3


def test_the_layout_follows_the_world_unless_asked() -> None:
    one, two = World(), World(rank=1, size=2)
    net = nn.Linear(1, 1)
    assert choose_layout(None, one, net) == "file"
    assert choose_layout(None, two, net) == "sharded"
    assert choose_layout(None, two, None) == "file"  # a manager without a model only reads
    assert choose_layout("sharded", one, net) == "sharded"
    with pytest.raises(CheckpointConfigError, match=r"^layout must be one of \('file', 'sharded'\) or None "
                                                    r"\(chosen from the world\), got 'dcp'$"):
        choose_layout("dcp", one, net)


@pytest.mark.parametrize(("option", "said"), [
    ({"file_format": "ckpt"}, "file_format='ckpt'"),
    ({"async_save": True, "write_mb_per_s": 50.0}, "write_mb_per_s=50.0"),
    ({"crc_check": True}, "crc_check=True"),
    ({"saved_network": nn.Linear(1, 1)}, "saved_network=<a module>"),
])
def test_options_the_sharded_layout_cannot_honour_are_refused(tmp_path, option: dict[str, object], said: str) -> None:
    with pytest.raises(CheckpointConfigError) as err:
        tr.CheckpointManager(str(tmp_path), model=nn.Linear(1, 1), layout="sharded", **option)  # type: ignore[arg-type]
    assert str(err.value) == (f"{said}: not available with sharded checkpoints (the layout under torchrun); "
                              "drop the option, or save one file per process with layout='file' in a "
                              "one-process job")
    assert list(tmp_path.iterdir()) == []


def test_a_save_deadline_is_refused_where_no_rank_could_be_late(tmp_path) -> None:
    with pytest.raises(CheckpointConfigError, match=r"^save_deadline_s=30: a deadline applies to the ranks of "
                                                    r"a sharded save \(under torchrun, or layout='sharded'\); "
                                                    "drop it here$"):
        tr.CheckpointManager(str(tmp_path), model=nn.Linear(1, 1), save_deadline_s=30)


def test_the_sharded_layout_needs_a_model(tmp_path) -> None:
    with pytest.raises(CheckpointConfigError, match=r"^a sharded checkpoint \(under torchrun\) needs model=: DCP "
                                                    "writes its weights and the optimizer's state keyed by "
                                                    "parameter name$"):
        tr.CheckpointManager(str(tmp_path), layout="sharded")


def test_distributed_checkpoint_manager_is_a_deprecated_alias(tmp_path) -> None:
    from torchresume.distributed import DistributedCheckpointManager, ShardedStore
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = DistributedCheckpointManager(str(tmp_path), prefix="net", keep=2)
    assert isinstance(old, ShardedStore)
    assert [w.category for w in caught] == [DeprecationWarning]
    assert str(caught[0].message).startswith("DistributedCheckpointManager is deprecated: use "
                                             "torchresume.CheckpointManager(directory, model=..., optimizer=...)")
    old.close()


def test_an_exception_on_one_rank_saves_no_breakpoint(tmp_path, caplog) -> None:
    mgr, _ = _manager(str(tmp_path), "file")
    mgr.world = World(rank=1, size=2)  # as one rank of two: the other is not at a save
    with pytest.raises(RuntimeError, match="^boom$"), mgr.guard() as guard:
        guard.position = (1, 3, 3)
        raise RuntimeError("boom")
    mgr.world = World()
    mgr.close()
    assert list(tmp_path.iterdir()) == []
    assert ("RuntimeError on rank 1: no breakpoint under torchrun (a save needs every rank); the rerun "
            "resumes from the newest committed checkpoint") in caplog.text


def test_the_sharded_layout_writes_object_storage_directly() -> None:
    sharded = tr.CheckpointManager("s3://bucket/run", model=nn.Linear(1, 1), layout="sharded")
    one_file = tr.CheckpointManager("s3://bucket/run", model=nn.Linear(1, 1))
    assert sharded.remote is None and sharded.staging is None  # no durable local copy first
    assert one_file.staging is not None
    sharded.close()
    one_file.close()


@pytest.mark.parametrize("layout", ["file", "sharded"])
def test_a_resume_applies_the_retention_a_kill_cut_off(tmp_path, layout: str) -> None:
    saver, _ = _manager(str(tmp_path), layout, keep=None)
    for step in (1, 2, 3):
        saver.save(epoch=1, step=step)
    saver.close()  # three left, as after a kill between the third commit and its retention at keep=2
    resumer, _ = _manager(str(tmp_path), layout, keep=2)
    info = resumer.restore_latest()
    resumer.close()
    assert info is not None and info["step"] == 3
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("run-")) == ["run-1_2.ckpt", "run-1_3.ckpt"]


def test_retention_at_resume_keeps_the_checkpoint_resumed_from_past_a_damaged_newest(tmp_path) -> None:
    saver, _ = _manager(str(tmp_path), "file", keep=None)
    for step in (1, 2):
        saver.save(epoch=1, step=step)
    saver.close()
    newest = tmp_path / "run-1_2.ckpt"
    data = bytearray(newest.read_bytes())
    data[-40] ^= 0xFF
    newest.write_bytes(bytes(data))
    resumer, _ = _manager(str(tmp_path), "file", keep=1)
    info = resumer.restore_latest()
    resumer.close()
    assert info is not None and info["step"] == 1  # passed over the damaged newest
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("run-")) == ["run-1_1.ckpt", "run-1_2.ckpt"]
