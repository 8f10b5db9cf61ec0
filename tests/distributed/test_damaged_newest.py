"""A damaged newest sharded checkpoint is skipped for the next older one, as in one process.

A chunk that fails its checksum is found only when it is read, after other tensors of that
checkpoint were loaded in place: the older checkpoint is then loaded over the whole state, so nothing
of the damaged one is left behind. Every checkpoint damaged: DamagedRunError, nothing deleted.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from torchresume.distributed import ShardedStore
from torchresume.errors import CorruptCheckpointError, DamagedRunError
from torchresume.files.sharded_reader import RestoreFailed


def _state(value: float) -> dict[str, dict[str, torch.Tensor]]:
    return {"model": {"w": torch.full((64,), value), "v": torch.full((64,), value), "b": torch.full((8,), value)}}


def _damage(checkpoint: Path) -> None:
    """Flip the last byte of each shard part (tensor data: the header is at the start)."""
    for name in os.listdir(checkpoint):
        if name.startswith("shard-"):
            part = checkpoint / name
            part.chmod(0o600)
            raw = bytearray(part.read_bytes())
            raw[-1] ^= 0xFF
            part.write_bytes(bytes(raw))


@pytest.mark.parametrize("group", [False, True], ids=["one process", "process group"])
def test_a_damaged_newest_is_skipped_and_the_older_loaded_over_everything(
        group: bool, request: pytest.FixtureRequest, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if group:
        request.getfixturevalue("one_rank_group")
    mgr = ShardedStore(str(tmp_path / "run"), prefix="run", keep=5)
    mgr.save(_state(1.0), epoch=1, step=1)
    mgr.save(_state(2.0), epoch=1, step=2)
    mgr.wait()
    _damage(tmp_path / "run" / "run-1_2.ckpt")
    capsys.readouterr()

    partly = _state(0.0)
    with pytest.raises(CorruptCheckpointError, match="checksum mismatch"):
        mgr.restore(partly, path=str(tmp_path / "run" / "run-1_2.ckpt"))
    assert any(t.ne(0.0).any() for t in partly["model"].values())  # DCP loads in place: partly loaded
    state = partly
    found = mgr.restore(state)
    assert found is not None and found.path.endswith("run-1_1.ckpt") and found.step == 1
    assert all(torch.equal(t, torch.full_like(t, 1.0)) for t in state["model"].values())  # no 2.0 left
    err = capsys.readouterr().err
    assert f"skipping invalid checkpoint {tmp_path}/run/run-1_2.ckpt" in err and "checksum mismatch" in err
    mgr.save(_state(3.0), epoch=1, step=2)  # training reaches the damaged step again: the save replaces it
    mgr.wait()
    assert "run-1_2.ckpt is the damaged checkpoint the restore passed over; replacing it" in capsys.readouterr().err
    again = _state(0.0)
    assert mgr.restore(again).path.endswith("run-1_2.ckpt")
    assert all(torch.equal(t, torch.full_like(t, 3.0)) for t in again["model"].values())
    _damage(tmp_path / "run" / "run-1_2.ckpt")

    _damage(tmp_path / "run" / "run-1_1.ckpt")
    with pytest.raises(DamagedRunError) as info:
        mgr.restore(_state(0.0))
    message = str(info.value)
    assert message.startswith(f"{tmp_path}/run: no checkpoint of the run can be read (run-1_2.ckpt, run-1_1.ckpt; "
                              "the newest: ")
    assert message.endswith("); nothing to resume from: put back a good copy, or start over with "
                            "resume='none' (the damaged files are kept)")
    assert sorted(os.listdir(tmp_path / "run")) == ["run-1_1.ckpt", "run-1_2.ckpt"]  # nothing deleted
    mgr.close()


def test_a_state_that_does_not_fit_is_raised_not_skipped(tmp_path: Path) -> None:
    """Only damage the reader finds passes a checkpoint over: a changed model fails on the newest, as it is."""
    mgr = ShardedStore(str(tmp_path), prefix="run", keep=5)
    mgr.save(_state(1.0), epoch=1, step=1)
    mgr.save(_state(2.0), epoch=1, step=2)
    mgr.wait()
    changed = {"model": {**_state(0.0)["model"], "new_layer": torch.zeros(4)}}
    with pytest.raises(RestoreFailed, match=r"run-1_2\.ckpt: restore failed: .*new_layer"):
        mgr.restore(changed)
    mgr.close()


def test_a_named_damaged_checkpoint_is_not_replaced_by_another(tmp_path: Path) -> None:
    """``restore(path=...)`` loads that checkpoint or raises: it never falls back to another one."""
    mgr = ShardedStore(str(tmp_path), prefix="run", keep=5)
    mgr.save(_state(1.0), epoch=1, step=1)
    newest = mgr.save(_state(2.0), epoch=1, step=2)
    mgr.wait()
    _damage(tmp_path / "run-1_2.ckpt")
    with pytest.raises(CorruptCheckpointError, match="checksum mismatch"):
        mgr.restore(_state(0.0), path=newest)
    mgr.close()


def _flip_last_byte(file: Path) -> None:
    file.chmod(0o600)
    raw = bytearray(file.read_bytes())
    raw[-1] ^= 0xFF
    file.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", ["rank 1's part flipped", "a shard part missing"])
def test_a_newest_damaged_for_one_rank_is_skipped_by_every_rank(tmp_path: Path, damage: str) -> None:
    """Under torchrun both ranks pass over the damaged newest together (rank 0 says so once, no
    traceback) and load the next older one, whose weights are the same: whether only rank 1 meets the
    damage (its own rank part), or every rank does (a part gone: issue 35 item 6)."""
    from tests.distributed.conftest import torchrun
    saved = torchrun(2, "ddp_save", tmp_path / "ckpt", tmp_path / "out")
    assert saved.returncode == 0, saved.output[-3000:]
    assert saved.results[0]["kept"] == ["ddp-1_1.ckpt", "ddp-1_2.ckpt"]
    newest = tmp_path / "ckpt" / "ddp-1_2.ckpt"
    if damage == "rank 1's part flipped":
        _flip_last_byte(newest / "rank-00001.safetensors")
    else:  # a flipped dcp_metadata.json and a damaged header: tests/attacks/test_hostile_sharded.py (one rank)
        (newest / "shard-00001-0.safetensors").unlink()

    loaded = torchrun(2, "ddp_restore_model", tmp_path / "ckpt", tmp_path / "out")
    assert loaded.returncode == 0, loaded.output[-3000:]
    for r in (0, 1):
        assert loaded.results[r]["path"].endswith("ddp-1_1.ckpt") and loaded.results[r]["model_equal"]
    assert loaded.output.count(f"skipping invalid checkpoint {tmp_path}/ckpt/ddp-1_2.ckpt") == 1
    assert "Traceback" not in loaded.output and "AssertionError" not in loaded.output, loaded.output[-3000:]
