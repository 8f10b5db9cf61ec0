"""manager.py: CheckpointManager naming, retention, restore, async saves and breakpoints."""

from __future__ import annotations

import os
import random
import time

import numpy as np
import pytest
import torch

from torchresume import manager as manager_module
from torchresume.errors import AsyncSaveError
from torchresume.files import read_checkpoint
from torchresume.manager import CheckpointManager
from torchresume.naming import unique_prefix
from torchresume.retention import KeepBest, KeepEveryNMinutes, KeepLast


@pytest.fixture
def managers():
    made: list[CheckpointManager] = []

    def make(directory, **kw) -> CheckpointManager:
        m = CheckpointManager(str(directory), **kw)
        made.append(m)
        return m
    yield make
    for m in made:
        try:
            m.close()
        except AsyncSaveError:
            pass


def _names(directory) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(".ckpt"))


def test_file_names(tmp_path, managers, net) -> None:
    m = managers(tmp_path, model=net, prefix="run")
    assert m.file_name(2, 30) == "run-2_30.ckpt"
    assert m.file_name(2, 30, breakpoint=True) == "run-2_30_breakpoint.ckpt"
    path = m.save(1, 5)
    assert path == os.path.join(str(tmp_path), "run-1_5.ckpt")
    assert m.last_saved == path
    info = read_checkpoint(path).info
    assert (info["epoch"], info["step"], info["global_step"], info["prefix"]) == (1, 5, 5, "run")
    assert info["breakpoint"] is False


def test_unique_prefix(tmp_path) -> None:
    d = str(tmp_path)
    assert unique_prefix(d, "ckpt") == "ckpt"
    (tmp_path / "ckpt-1_1.ckpt").write_bytes(b"x")
    assert unique_prefix(d, "ckpt") == "ckpt_1"
    (tmp_path / "ckpt_1-1_1.ckpt").write_bytes(b"x")
    (tmp_path / "ckpt_4-1_1.ckpt").write_bytes(b"x")
    assert unique_prefix(d, "ckpt") == "ckpt_5"
    assert unique_prefix(d, "other") == "other"
    assert unique_prefix(d, "ckp") == "ckp"
    # a run killed before its first commit left only its graph: its restart keeps the prefix
    (tmp_path / "net-graph.json").write_text("{}")
    (tmp_path / "ckpt_9-graph.json").write_text("{}")
    assert unique_prefix(d, "net") == "net"
    assert unique_prefix(d, "ckpt") == "ckpt_5"
    assert unique_prefix(str(tmp_path / "missing"), "ckpt") == "ckpt"


def test_keep_last_retention(tmp_path, managers, net) -> None:
    m = managers(tmp_path, model=net, keep=2)
    for step in range(1, 6):
        m.save(1, step)
    m.wait()  # retention deletes in the background, after each commit
    assert _names(tmp_path) == ["ckpt-1_4.ckpt", "ckpt-1_5.ckpt"]
    assert [e.name for e in m.checkpoints()] == ["ckpt-1_5.ckpt", "ckpt-1_4.ckpt"]


def test_retention_spares_other_prefixes_and_breakpoints(tmp_path, managers, net) -> None:
    other = managers(tmp_path, model=net, prefix="other", keep=None)
    other.save(1, 1)
    other.close()
    m = managers(tmp_path, model=net, keep=1)
    m.save(1, 1, breakpoint=True)
    m.save(1, 2)
    m.save(1, 3)
    m.wait()
    assert _names(tmp_path) == ["ckpt-1_1_breakpoint.ckpt", "ckpt-1_3.ckpt", "other-1_1.ckpt"]


def test_keep_every_n_minutes_keeps_first_and_newest(tmp_path, managers, net) -> None:
    m = managers(tmp_path, model=net, keep=[KeepEveryNMinutes(60)])
    for step in range(1, 5):
        m.save(1, step)
    m.wait()
    assert _names(tmp_path) == ["ckpt-1_1.ckpt", "ckpt-1_4.ckpt"]


@pytest.mark.parametrize("keep", [0, [KeepBest(1, "acc")]])
def test_the_newest_is_never_deleted(tmp_path, managers, net, keep) -> None:
    m = managers(tmp_path, model=net, keep=keep)
    m.save(1, 1)
    m.save(1, 2)
    m.wait()
    assert _names(tmp_path) == ["ckpt-1_2.ckpt"]
    assert m.apply_retention() == []
    assert _names(tmp_path) == ["ckpt-1_2.ckpt"]


def test_keep_none_keeps_everything(tmp_path, managers, net) -> None:
    m = managers(tmp_path, model=net, keep=None)
    for step in range(4):
        m.save(0, step)
    assert len(_names(tmp_path)) == 4


def test_combined_policies_keep_the_union(tmp_path, managers, net) -> None:
    m = managers(tmp_path, model=net, keep=[KeepLast(1), KeepBest(1, "acc")])
    for step, acc in [(1, 0.2), (2, 0.9), (3, 0.5), (4, 0.1)]:
        m.save(1, step, info={"metrics": {"acc": acc}})
    m.wait()
    assert _names(tmp_path) == ["ckpt-1_2.ckpt", "ckpt-1_4.ckpt"]


def test_retention_deletes_off_the_callers_thread_after_the_commit(tmp_path, managers, net, monkeypatch) -> None:
    """A synchronous save returns once committed; the deletes run in the save slot's thread."""
    import threading

    from torchresume import catalog
    seen: list[tuple[str, bool]] = []
    real = catalog.delete

    def delete(path):
        seen.append((threading.current_thread().name, (tmp_path / "ckpt-1_3.ckpt").exists()))
        real(path)
    monkeypatch.setattr(catalog, "delete", delete)
    m = managers(tmp_path, model=net, keep=1)
    for step in (1, 2, 3):
        m.save(1, step)
    m.wait()
    assert _names(tmp_path) == ["ckpt-1_3.ckpt"]
    assert len(seen) == 2 and all(name.startswith("torchresume-retention") for name, _ in seen), seen
    assert seen[-1][1]  # the newest was committed before the last delete


def test_restore_model_optimizer_scheduler_and_rng(tmp_path, managers, trained) -> None:
    net, opt = trained
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    opt.step()
    sched.step()
    m = managers(tmp_path, model=net, optimizer=opt, scheduler=sched)
    path = m.save(2, 7, global_step=17, info={"metrics": {"loss": 0.25}})
    draws = (random.random(), float(np.random.rand()), torch.rand(3))

    torch.manual_seed(99)
    from tests.conftest import TinyNet
    net2 = TinyNet()
    opt2 = torch.optim.SGD(net2.parameters(), lr=0.01, momentum=0.9)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=1, gamma=0.5)
    m2 = managers(tmp_path, model=net2, optimizer=opt2, scheduler=sched2, keep=None)
    info = m2.restore(path)
    assert (info["epoch"], info["step"], info["global_step"]) == (2, 7, 17)
    assert info["metrics"] == {"loss": 0.25}
    assert info["lacking"] == []
    for k, v in net.state_dict().items():
        assert torch.equal(net2.state_dict()[k], v), k
    for p, p2 in zip(net.parameters(), net2.parameters(), strict=True):
        assert torch.equal(opt2.state[p2]["momentum_buffer"], opt.state[p]["momentum_buffer"])
    assert sched2.last_epoch == sched.last_epoch == 1
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == 0.005
    after = (random.random(), float(np.random.rand()), torch.rand(3))
    assert after[:2] == draws[:2] and torch.equal(after[2], draws[2])


def test_restore_latest_picks_the_newest_valid(tmp_path, managers, net, capsys) -> None:
    m = managers(tmp_path, model=net, keep=None)
    m.save(1, 1)
    good = m.save(1, 2)
    bad = str(tmp_path / "ckpt-1_3.ckpt")
    with open(bad, "wb") as f:
        f.write(b"")
    later = time.time() + 60  # newer than the good one by its mtime (it has no header time)
    os.utime(bad, (later, later))
    info = m.restore_latest()
    assert info is not None and info["path"] == good and info["step"] == 2
    assert "skipping invalid checkpoint" in capsys.readouterr().err


def test_restore_latest_on_empty_directory(tmp_path, managers, net) -> None:
    assert managers(tmp_path, model=net).restore_latest() is None


def test_weights_only_file_is_reported_as_lacking(tmp_path, managers, trained, capsys) -> None:
    from torchresume import save_checkpoint
    net, opt = trained
    path = str(tmp_path / "weights.ckpt")
    save_checkpoint(net, path)
    m = managers(tmp_path / "run", model=net, optimizer=opt)
    info = m.restore(path)
    assert info["lacking"] == ["optimizer", "rng"]
    assert (f"torchresume: {path} holds no optimizer, rng state (weights-only checkpoint?); "
            "those start fresh") in capsys.readouterr().err


def test_async_save_snapshots_the_weights(tmp_path, managers, net) -> None:
    m = managers(tmp_path, model=net, async_save=True)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    path = m.save(1, 1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(100.0)
    m.wait()
    tree = read_checkpoint(path).tree
    for k, v in before.items():
        assert torch.equal(tree[k], v), k


def test_async_failure_reraised_by_close(tmp_path, net, monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(manager_module, "write_encoded", fail)
    m = CheckpointManager(str(tmp_path), model=net, async_save=True)
    path = m.save(1, 1)
    with pytest.raises(AsyncSaveError) as err:
        m.close()
    assert str(err.value) == f"background save of {path} failed: [Errno 5] Input/output error"
    assert isinstance(err.value.__cause__, OSError)
    assert _names(tmp_path) == []


def test_async_failure_reraised_by_the_next_save(tmp_path, managers, net, monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(manager_module, "write_encoded", fail)
    m = managers(tmp_path, model=net, async_save=True)
    m.save(1, 1)
    m.slot._writer._pending[0].exception()  # let the background job finish
    with pytest.raises(AsyncSaveError, match="background save of .*ckpt-1_1.ckpt failed"):
        m.save(1, 2)


def test_save_breakpoint(tmp_path, managers, net, capsys) -> None:
    m = managers(tmp_path, model=net, keep=1)
    m.save(1, 1)
    path = m.save_breakpoint(2, 3, reason=KeyError("x"))
    assert os.path.basename(path) == "ckpt-2_3_breakpoint.ckpt"
    info = read_checkpoint(path).info
    assert info["breakpoint"] is True and (info["epoch"], info["step"]) == (2, 3)
    assert (f"torchresume: KeyError at epoch 2 step 3; breakpoint saved to {path}"
            in capsys.readouterr().err)
    entries = m.checkpoints()
    assert [e.breakpoint for e in entries] == [True, False]


def test_guard_saves_a_breakpoint_on_error(tmp_path, managers, net) -> None:
    m = managers(tmp_path, model=net)
    with pytest.raises(ZeroDivisionError), m.guard() as g:
        g.step_done(1, 4)
        raise ZeroDivisionError
    assert _names(tmp_path) == ["ckpt-1_4_breakpoint.ckpt"]


def test_reserved_names_and_extra_state(tmp_path, managers, net) -> None:
    class Counter:
        def __init__(self) -> None:
            self.n = 0

        def state_dict(self):
            return {"n": self.n}

        def load_state_dict(self, s) -> None:
            self.n = s["n"]

    m = managers(tmp_path, model=net)
    with pytest.raises(ValueError, match="state name 'optimizer' is reserved"):
        m.register("optimizer", Counter())
    c = Counter()
    c.n = 7
    m.register("counter", c)
    assert m.extra == {"counter": c}
    path = m.save(1, 1)
    assert read_checkpoint(path).tree["extra"]["counter"]["n"] == 7
    c2 = Counter()
    m2 = managers(tmp_path, model=net, extra={"counter": c2})
    m2.restore(path)
    assert c2.n == 7


def test_encrypted_manager_round_trip(tmp_path, managers, net) -> None:
    key = bytes(range(16))
    m = managers(tmp_path, model=net, enc_key=key)
    path = m.save(1, 1)
    with open(path, "rb") as f:
        assert f.read(8) == b"TRCRYPT1"
    m.close()
    m2 = managers(tmp_path, model=net, enc_key=key)
    info = m2.restore_latest()
    assert info is not None and info["path"] == path


def test_prune_keeps_the_newest_of_every_prefix(tmp_path, managers, net) -> None:
    from torchresume.manager import prune
    for prefix in ("a", "b"):
        m = managers(tmp_path, model=net, prefix=prefix, keep=None)
        for step in range(1, 4):
            m.save(1, step)
        m.save(1, 9, breakpoint=True)
        m.close()
    deleted = prune(str(tmp_path), 2)
    assert sorted(os.path.basename(p) for p in deleted) == ["a-1_1.ckpt", "b-1_1.ckpt"]
    assert _names(tmp_path) == ["a-1_2.ckpt", "a-1_3.ckpt", "a-1_9_breakpoint.ckpt",
                                "b-1_2.ckpt", "b-1_3.ckpt", "b-1_9_breakpoint.ckpt"]
    assert prune(str(tmp_path), 2) == []


def test_restore_latest_skips_best_copies(tmp_path, managers, net) -> None:
    m = managers(tmp_path, model=net, keep=None)
    regular = m.save(1, 1)
    m.close()
    best = managers(tmp_path, model=net, prefix="ckpt-best", keep=None)
    best.save(1, 2)
    best.close()
    info = managers(tmp_path, model=net).restore_latest()
    assert info is not None and info["path"] == regular


def test_saved_network_writes_a_model_checkpoint(tmp_path, managers, trained) -> None:
    net, opt = trained
    m = managers(tmp_path, model=net, optimizer=opt, saved_network=net.fc2)
    ckpt = read_checkpoint(m.save(1, 1))
    assert ckpt.kind == "model"
    assert sorted(ckpt.tree) == ["bias", "weight"]
    assert torch.equal(ckpt.tree["weight"], net.fc2.weight)
