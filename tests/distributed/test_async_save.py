"""Async distributed saves under a real torchrun (2 ranks, gloo, CPU).

The save returns while the write still runs (writes are slowed by 2 s per part); the
tensors changed right after the call do not reach the checkpoint; the previous
checkpoint stays the newest and is not pruned until the background save finished;
a new launch restores the values at call time bitwise, every rank's state included.
The main test is two launches; the further torchrun tests are marked slow
(``-m "not slow"`` leaves them out): FSDP2 shards, a failing and a SIGKILLed rank,
the train CLI against a synchronous run, object storage.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.distributed.conftest import torchrun
from tests.distributed.launch import committed, every_tensor, run, torchrun_cmd, train_cli
from tests.storage.conftest import bucket, s3_server  # noqa: F401 - the fixtures
from torchresume import storage
from torchresume.distributed import ShardedStore, manager
from torchresume.errors import AsyncSaveError, CheckpointConfigError


def test_async_without_process_group_snapshot_newest_after_wait(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """One process (no process group), fast: the write is held until the test lets it go."""
    torch.manual_seed(0)
    net = nn.Linear(4, 3)
    mgr = ShardedStore(str(tmp_path), prefix="solo", keep=1, async_save=True)
    first = mgr.save({"model": net.state_dict()}, epoch=1, step=1, rank_state={"pos": [1]})
    mgr.wait()
    release = threading.Event()
    real_write = manager.ShardedStore._write

    def held(self: ShardedStore, *args: object, **kwargs: object) -> None:
        release.wait(30)
        real_write(self, *args, **kwargs)  # type: ignore[arg-type]
    monkeypatch.setattr(manager.ShardedStore, "_write", held)
    at_call = {k: v.clone() for k, v in net.state_dict().items()}
    pos = {"pos": [2]}
    second = mgr.save({"model": net.state_dict()}, epoch=1, step=2, rank_state=pos)
    with torch.no_grad():
        net.weight.add_(5.0)
    pos["pos"][0] = -1
    assert mgr.saving == second and mgr.newest() == first  # in flight: the previous is the newest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["solo-1_1.ckpt"]  # and is not pruned
    release.set()
    mgr.close()
    assert mgr.newest() == second and sorted(p.name for p in tmp_path.iterdir()) == ["solo-1_2.ckpt"]
    state = {"model": nn.Linear(4, 3).state_dict()}
    info = ShardedStore(str(tmp_path), prefix="solo").restore(state)
    assert info is not None and info.rank_states == [{"pos": [2]}]
    assert all(torch.equal(state["model"][k], at_call[k]) for k in at_call)
    assert not torch.equal(net.weight, at_call["weight"])


def test_async_top_level_stateful_is_snapshotted_at_the_call(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = nn.Linear(4, 3)
    at_call = {k: v.clone() for k, v in net.state_dict().items()}
    mgr = ShardedStore(str(tmp_path), prefix="solo", async_save=True)
    mgr.save({"model": net}, epoch=1, step=1)  # a Stateful: DCP would call net.state_dict() itself
    staged = mgr.slot._stager.buffers
    assert staged is not None and staged.nbytes == (4 * 3 + 3) * 4  # its tensors staged, not the module copied
    with torch.no_grad():
        net.weight.add_(5.0)
    mgr.close()
    fresh = nn.Linear(4, 3)
    assert ShardedStore(str(tmp_path), prefix="solo").restore({"model": fresh}) is not None
    assert all(torch.equal(fresh.state_dict()[k], at_call[k]) for k in at_call)


def test_async_failure_reraised_at_next_save_and_async_flag_checked(tmp_path: Path) -> None:
    with pytest.raises(CheckpointConfigError, match="async_save must be True or False"):
        ShardedStore(str(tmp_path), async_save="yes")  # type: ignore[arg-type]
    mgr = ShardedStore(str(tmp_path), prefix="solo", async_save=True)
    mgr.save({"model": {"w": torch.ones(2)}}, epoch=1, step=1, rank_state=object())  # cannot be stored
    with pytest.raises(AsyncSaveError, match=r"solo-1_1.ckpt: sharded save failed"):
        mgr.save({"model": {"w": torch.ones(2)}}, epoch=1, step=2)
    assert mgr.newest() is None  # the failed save left nothing; the raising call saved nothing
    assert mgr.save({"model": {"w": torch.ones(2)}}, epoch=1, step=2) == str(tmp_path / "solo-1_2.ckpt")
    mgr.close()  # the error was reported once: this one succeeds
    assert mgr.newest() == str(tmp_path / "solo-1_2.ckpt")


def test_async_save_snapshot_commit_then_retention_restore_bitwise(tmp_path: Path) -> None:
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    saved = torchrun(2, "async_save", ckpt, out)
    assert saved.returncode == 0, saved.output[-3000:]
    new, prev, oldest = (str(ckpt / f"ddp-1_{s}.ckpt") for s in (2, 1, 0))
    for r in (0, 1):
        res = saved.results[r]
        assert res["path"] == new
        assert res["returned_s"] < 2.0, res  # each part write sleeps 2 s: the call did not wait for it
        assert res["saving_at_return"] == new and res["saving_during"] == new
        assert res["changed"] is True  # the live tensors really moved after the call
        assert res["newest_before"] == prev
        assert res["newest_during"] == prev  # in flight: the previous one is still the newest ...
        during = res["listing_during"]
        assert during["ddp-1_0.ckpt"] and during["ddp-1_1.ckpt"]  # ... and nothing was pruned yet
        assert during.get("ddp-1_2.ckpt", False) is False  # not committed while in flight
        assert res["newest_after"] == new  # after wait(): committed, then keep=2 pruned the oldest
        assert res["listing_after"] == {"ddp-1_1.ckpt": True, "ddp-1_2.ckpt": True}
        # Save 0 stages everything, save 1 only this rank's share (save 0's plan), save 2 has a new
        # layout (the optimizer's state): everything again. test_lean_staging.py counts the bytes.
        assert (res["allocations_before"], res["allocations_after"]) == (2, 3)
    assert not Path(oldest).exists()

    restored = torchrun(2, "ddp_restore", ckpt, out)  # a new launch: values at call time, bitwise
    assert restored.returncode == 0, restored.output[-3000:]
    for r in (0, 1):
        res = restored.results[r]
        assert (res["epoch"], res["step"], res["world_size"], res["path"]) == (1, 2, 2, new)
        assert res["model_equal"] is True and res["optim_equal"] is True, res
        assert res["rank_states_equal"] == [True, True]


@pytest.mark.slow  # torchrun launches beyond the main test's two
def test_fsdp2_dtensor_shards_staged_async_then_loaded_into_plain_module(tmp_path: Path) -> None:
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    saved = torchrun(2, "fsdp_async_save", ckpt, out)
    assert saved.returncode == 0, saved.output[-3000:]
    for res in saved.results.values():
        assert res["sharded"] is True and res["changed"] is True
        assert res["saving"] == res["path"] == str(ckpt / "fsdp-1_2.ckpt")
    loaded = torchrun(1, "plain_load", ckpt, out)  # the full tensors as they were at the call
    assert loaded.returncode == 0, loaded.output[-3000:]
    res = loaded.results[0]
    assert res["world_size"] == 2 and res["rank_states"] == [{"rank": 0}, {"rank": 1}]
    assert res["equal"] == {name: True for name in res["names"]} and len(res["names"]) == 6


@pytest.mark.slow  # torchrun launches beyond the main test's two
def test_background_failure_raises_typed_error_on_every_rank_at_next_save(tmp_path: Path) -> None:
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    launch = torchrun(2, "async_fail", ckpt, out)
    assert launch.returncode == 0, launch.output[-3000:]
    for r in (0, 1):
        res = launch.results[r]
        assert res["error"] == "AsyncSaveError", res
        assert "ddp-1_2.ckpt: sharded save failed (rank 1: OSError: [Errno 28] No space left" in res["message"]
        assert res["newest"] == str(ckpt / "ddp-1_1.ckpt")  # keep=1 pruned nothing: the failed save never counted
    assert sorted(p.name for p in ckpt.iterdir()) == ["ddp-1_1.ckpt"]  # step 2 discarded, step 3 never started


@pytest.mark.slow  # torchrun launches beyond the main test's two
def test_sigkill_during_background_write_commits_nothing_previous_restores(tmp_path: Path) -> None:
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    killed = torchrun(2, "async_kill", ckpt, out)
    assert killed.returncode != 0
    assert "Signal 9 (SIGKILL)" in killed.output or "exitcode  : -9" in killed.output, killed.output[-2000:]
    assert not (ckpt / "ddp-1_2.ckpt" / "manifest.json").exists()
    assert (ckpt / "ddp-1_1.ckpt" / "manifest.json").exists()  # not pruned: the new save never finished
    if 0 in killed.results:  # rank 0 saw the failure before torchrun stopped it: a typed error
        assert killed.results[0]["error"] == "AsyncSaveError", killed.results[0]
        assert "ddp-1_2.ckpt: sharded save failed" in killed.results[0]["message"]
    restored = torchrun(2, "restore_any", ckpt, tmp_path / "restored")
    assert restored.returncode == 0, restored.output[-3000:]
    for res in restored.results.values():
        assert (res["path"], res["epoch"], res["step"]) == (str(ckpt / "ddp-1_1.ckpt"), 1, 1)
        assert [s["rank"] for s in res["rank_states"]] == [0, 1]


@pytest.mark.slow  # torchrun launches beyond the main test's two
def test_train_cli_async_save_checkpoints_equal_sync_ones_bitwise(tmp_path: Path) -> None:
    """``torchrun ... train --async-save``: the same checkpoints, every tensor, as a synchronous run
    (``--write-mb-per-s`` is refused there: tests/distributed/test_torchrun_parity.py)."""
    finals = {}
    for mode in ("sync", "async"):
        flags = ["--epochs", "1", "--steps-per-epoch", "12", "--save-steps", "4", "--keep-max", "2"]
        background = ["--async-save"] if mode == "async" else []
        cli = train_cli(tmp_path / mode, *flags, *background)
        done = run(torchrun_cmd(2, cli), tmp_path)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        kept = committed(tmp_path / mode, "mlp")
        assert [p.name for p in kept] == ["mlp-1_8.ckpt", "mlp-1_12.ckpt"]  # keep=2 after the last commit
        finals[mode] = {name: t for name, t in every_tensor(kept[-1]).items()}
    assert "in the background" in done.stderr + done.stdout
    assert finals["async"].keys() == finals["sync"].keys()
    assert any(name.startswith("rank-00001") for name in finals["async"])  # rank 1's RNG and position
    for name, tensor in finals["sync"].items():
        assert torch.equal(finals["async"][name], tensor), name


@pytest.mark.slow  # torchrun launches beyond the main test's two
def test_async_save_on_s3_every_rank_uploads_committed_restores(bucket: str, tmp_path: Path) -> None:  # noqa: F811
    url, out = bucket + "/run", tmp_path / "out"
    saved = torchrun(2, "ddp_save_async", url, out)
    assert saved.returncode == 0, saved.output[-3000:]
    path = url + "/ddp-1_2.ckpt"
    assert saved.results[0]["path"] == path == saved.results[0]["newest"] == saved.results[1]["newest"]
    assert saved.results[0]["kept"] == ["ddp-1_1.ckpt", "ddp-1_2.ckpt"]
    s3, _ = storage.resolve(url)
    names = {i.name for i in s3.list(path)}
    assert {"manifest.json", "dcp_metadata.json", "rank-00000.safetensors", "rank-00001.safetensors"} <= names
    restored = torchrun(2, "ddp_restore", url, out)
    assert restored.returncode == 0, restored.output[-3000:]
    for res in restored.results.values():
        assert res["path"] == path
        assert res["model_equal"] and res["optim_equal"] and res["rank_states_equal"] == [True, True], res
