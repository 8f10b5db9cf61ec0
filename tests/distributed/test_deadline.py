"""A hung rank cannot hold the job: a save past its deadline is aborted on every rank, nothing committed.

Real torchrun (2 ranks, gloo on CPU). Rank 1's part writes of step 4 stall for 30 s
(tests/distributed/deadline_worker.py); the deadline is 2 s. In process: the option's checks, one
process's deadline, and the refusal of a deadline the process group's timeout would cut short.
"""

from __future__ import annotations

import datetime
import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn

from tests.distributed import deadline_worker
from tests.distributed.conftest import free_port, torchrun
from torchresume.data import ArrayDataset
from torchresume.distributed import ShardedStore, writer
from torchresume.distributed.save_failures import deadline_line
from torchresume.errors import CheckpointConfigError, SaveDeadlineError
from torchresume.train import CheckpointConfig, Model, ModelCheckpoint

WORKER = Path(deadline_worker.__file__)
DEADLINE_S = deadline_worker.DEADLINE_S
LAUNCH_S = 90  # a launch takes 10-20 s; one whose saves wait out every 30 s stall takes minutes
ADVICE = "check that rank's storage, or raise save_deadline_s if its writes are only slow"


def aborted(path: Path, previous: Path, rank: int = 1) -> str:
    return (f"{path}: save aborted: rank {rank} did not write its part within save_deadline_s={DEADLINE_S:g} "
            f"(its storage hung or is too slow); nothing was committed and {previous} stays the newest; {ADVICE}")


def test_hung_rank_aborts_the_save_on_every_rank_sync_and_async(tmp_path: Path) -> None:
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    launch = torchrun(2, "manager", ckpt, out, worker=WORKER, timeout=LAUNCH_S)
    assert launch.returncode == 0, launch.output[-3000:]
    assert sorted(launch.results) == [0, 1]
    for r, res in launch.results.items():
        sync, background = res["sync"], res["async"]
        line = aborted(ckpt / "sync" / "ddp-1_4.ckpt", ckpt / "sync" / "ddp-1_2.ckpt")
        assert (sync["error"], sync["message"]) == ("SaveDeadlineError", line), r
        path = ckpt / "async" / "ddp-1_4.ckpt"
        line = aborted(path, ckpt / "async" / "ddp-1_2.ckpt")
        assert (background["error"], background["cause"]) == ("AsyncSaveError", "SaveDeadlineError"), r
        assert background["message"] == f"background save of {path} failed: {line}", r
        for kind, run in (("sync", sync), ("async", background)):
            assert run["seconds"] < 3 * DEADLINE_S, (r, kind, run["seconds"])  # the stall lasts 30 s
            assert run["newest"] == str(ckpt / kind / "ddp-1_2.ckpt"), (r, kind)
            assert run["listing"] == {"ddp-1_2.ckpt": True}, (r, kind)  # step 4's parts removed, never committed
            assert run["newest_after"] == str(ckpt / kind / "ddp-1_6.ckpt"), (r, kind)  # the next save commits
    for kind in ("sync", "async"):
        assert not (ckpt / kind / "ddp-1_4.ckpt" / "manifest.json").exists()
        assert (ckpt / kind / "ddp-1_6.ckpt" / "manifest.json").exists()


def test_training_continues_or_stops_after_an_aborted_save(tmp_path: Path) -> None:
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    launch = torchrun(2, "train", ckpt, out, worker=WORKER, timeout=LAUNCH_S)
    assert launch.returncode == 0, launch.output[-3000:]
    assert sorted(launch.results) == [0, 1]
    kept = {"par-1_2.ckpt": True, "par-1_6.ckpt": True, "par-1_8.ckpt": True}
    for r, res in launch.results.items():
        for kind in ("continue", "async"):  # on_save_deadline="continue": said, and the next save commits
            assert (res[kind]["error"], res[kind]["steps"]) == (None, 8), (r, kind, res[kind])
            assert res[kind]["listing"] == kept, (r, kind)
        stop = res["stop"]
        assert (stop["error"], stop["steps"]) == ("SaveDeadlineError", None), (r, stop)
        assert stop["message"] == aborted(ckpt / "stop" / "par-1_4.ckpt", ckpt / "stop" / "par-1_2.ckpt")
        assert stop["listing"] == {"par-1_2.ckpt": True}, r
    said = "training continues (on_save_deadline='continue'), the next save tries again"
    assert "save aborted: rank 1 did not write its part within save_deadline_s=2" in launch.output
    assert said in launch.output, launch.output[-3000:]


def test_one_process_save_past_its_deadline_commits_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a process group the manager works as one rank: its deadline holds the same way."""
    real = writer.write_part

    def stalled(path: str, *args: Any, **kwargs: Any) -> Any:
        if path.endswith("_4.ckpt"):
            time.sleep(3.0)
        return real(path, *args, **kwargs)
    monkeypatch.setattr(writer, "write_part", stalled)
    mgr = ShardedStore(str(tmp_path), prefix="one", save_deadline_s=0.5)
    state = {"model": nn.Linear(2, 2).state_dict()}
    good = mgr.save(state, epoch=1, step=2)
    start = time.monotonic()
    with pytest.raises(SaveDeadlineError) as info:
        mgr.save(state, epoch=1, step=4)
    assert time.monotonic() - start < 1.5
    line = aborted(tmp_path / "one-1_4.ckpt", tmp_path / "one-1_2.ckpt", rank=0)
    assert str(info.value) == line.replace("save_deadline_s=2", "save_deadline_s=0.5")
    assert mgr.newest() == good
    assert not (tmp_path / "one-1_4.ckpt" / "manifest.json").exists()
    mgr.close()


def test_a_good_save_under_a_deadline_is_unaffected(tmp_path: Path) -> None:
    mgr = ShardedStore(str(tmp_path), prefix="ok", save_deadline_s=30)
    net = nn.Linear(3, 3)
    path = mgr.save({"model": net.state_dict()}, epoch=1, step=1, rank_state={"r": 0})
    restored = {"model": nn.Linear(3, 3).state_dict()}
    found = mgr.restore(restored)
    assert found is not None and found.path == path and found.rank_state == {"r": 0}
    assert all(torch.equal(restored["model"][k], v) for k, v in net.state_dict().items())
    mgr.close()


@pytest.mark.parametrize("value", [0, -1, True, "30", float("inf"), float("nan")])
def test_the_deadline_is_a_positive_number_of_seconds(tmp_path: Path, value: object) -> None:
    message = ("save_deadline_s must be a number of seconds > 0 (each rank's time to write its part of a sharded "
               f"save, default 300) or None for no deadline, got {value!r}")
    with pytest.raises(CheckpointConfigError) as info:
        ShardedStore(str(tmp_path), save_deadline_s=value)  # type: ignore[arg-type]
    assert str(info.value) == message
    with pytest.raises(CheckpointConfigError) as info:
        CheckpointConfig(save_deadline_s=value)  # type: ignore[arg-type]
    assert str(info.value) == message


def test_on_save_deadline_is_continue_or_stop() -> None:
    with pytest.raises(CheckpointConfigError) as info:
        CheckpointConfig(on_save_deadline="retry")
    assert str(info.value) == (
        "on_save_deadline='retry' is not a policy; use 'continue' (warn, keep training: the previous checkpoint "
        "stays the newest and the next save tries again) or 'stop' (raise the SaveDeadlineError and end training)")
    assert CheckpointConfig(save_deadline_s=None, on_save_deadline="stop").save_deadline_s is None


def test_a_deadline_not_below_the_process_group_timeout_is_refused_the_default_shortened(tmp_path: Path) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=120))
    try:
        with pytest.raises(CheckpointConfigError) as info:
            ShardedStore(str(tmp_path), save_deadline_s=300)
        assert str(info.value) == (
            "save_deadline_s=300 is not below the process group's timeout (120 s): the ranks wait for a late one "
            "in a collective, which would time out first and end the job; pass a smaller save_deadline_s "
            "(default 300) or a longer timeout to init_process_group")
        assert ShardedStore(str(tmp_path), save_deadline_s=60).save_deadline_s == 60.0
        # Not passed (as under Lightning or the HF Trainer, which cannot pass one): half the timeout.
        assert ShardedStore(str(tmp_path)).save_deadline_s == 60.0
        assert ShardedStore(str(tmp_path), save_deadline_s=None).save_deadline_s is None
    finally:
        dist.destroy_process_group()


def test_one_process_training_refuses_a_deadline_it_cannot_honour(tmp_path: Path) -> None:
    """Model.train in one process: a deadline asked for is refused before anything is written."""
    net = nn.Linear(2, 1)
    model = Model(net, nn.MSELoss(), torch.optim.SGD(net.parameters(), lr=0.1), device="cpu")
    x = torch.randn(8, 2)
    for options, message in (
        ({"save_deadline_s": 60}, "save_deadline_s=60 applies to sharded saves under torchrun (a rank whose write "
         "hangs would hold the others); one process has no other rank to hold and does not abandon its save: "
         "leave save_deadline_s at its default (300) or None, or train under torchrun"),
        ({"on_save_deadline": "stop"}, "on_save_deadline='stop' applies to sharded saves under torchrun; one "
         "process has no save deadline: leave on_save_deadline at its default ('continue'), or train under "
         "torchrun")):
        cfg = CheckpointConfig(save_checkpoint_steps=1, **options)  # type: ignore[arg-type]
        with pytest.raises(CheckpointConfigError) as info:
            model.train(1, ArrayDataset(x, x[:, :1], batch_size=4), [ModelCheckpoint("p", str(tmp_path / "c"), cfg)])
        assert str(info.value) == message
        assert not os.path.exists(tmp_path / "c" / "p-1_1.ckpt")
    cfg = CheckpointConfig(save_checkpoint_steps=1, save_deadline_s=None)  # no deadline: what one process does
    model.train(1, ArrayDataset(x, x[:, :1], batch_size=4), [ModelCheckpoint("p", str(tmp_path / "d"), cfg)])
    assert (tmp_path / "d" / "p-1_2.ckpt").exists()


def test_the_line_names_every_late_rank_and_what_stays() -> None:
    assert deadline_line("c/x-1_4.ckpt", [1, 3], 2.5, "there is no earlier checkpoint", "rank 2: OSError: full") == (
        "c/x-1_4.ckpt: save aborted: ranks 1, 3 did not write their parts within save_deadline_s=2.5 (their "
        "storage hung or is too slow) (also failed: rank 2: OSError: full); nothing was committed and there is "
        "no earlier checkpoint; check those ranks' storage, or raise save_deadline_s if their writes are only slow")
