"""A rank whose storage fails, or that is SIGKILLed mid-save: no commit, the previous checkpoint restores."""

from __future__ import annotations

from pathlib import Path

from tests.distributed.conftest import torchrun


def test_failing_rank_every_rank_raises_one_error_nothing_committed(tmp_path: Path) -> None:
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    launch = torchrun(2, "fail_save", ckpt, out)
    assert launch.returncode != 0
    # Unloaded the failed launch takes 5-7 s; the bound (8x that) only catches a rank left waiting
    # for the process-group timeout (600 s) instead of raising.
    assert launch.seconds < 60, f"took {launch.seconds:.0f} s"
    assert sorted(launch.results) == [0, 1]  # every rank raised (and exited 1)
    for res in launch.results.values():
        assert res["error"] == "CheckpointWriteError"
        assert "ddp-1_2.ckpt: sharded save failed (rank 1: OSError: [Errno 28] No space left" in res["message"]
        assert "nothing was committed" in res["message"]
        assert "\n" not in res["message"]
        assert res["newest"] == str(ckpt / "ddp-1_1.ckpt")
    for r in (0, 1):  # each rank printed its one line
        assert f"rank {r}: CheckpointWriteError: {ckpt}/ddp-1_2.ckpt: sharded save failed" in launch.output
    assert not (ckpt / "ddp-1_2.ckpt").exists()  # the parts of the failed save were removed
    assert (ckpt / "ddp-1_1.ckpt" / "manifest.json").exists()


def test_sigkill_of_one_rank_mid_save_commits_nothing(tmp_path: Path) -> None:
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    killed = torchrun(2, "kill_save", ckpt, out)
    assert killed.returncode != 0
    assert "Signal 9 (SIGKILL)" in killed.output or "exitcode  : -9" in killed.output, killed.output[-2000:]
    assert not (ckpt / "ddp-1_2.ckpt" / "manifest.json").exists()
    restored = torchrun(2, "restore_any", ckpt, out)
    assert restored.returncode == 0, restored.output
    for res in restored.results.values():
        assert (res["path"], res["epoch"], res["step"]) == (str(ckpt / "ddp-1_1.ckpt"), 1, 1)
        assert [s["rank"] for s in res["rank_states"]] == [0, 1]
