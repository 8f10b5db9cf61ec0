"""Torchrun parity under a real ``torchrun --nproc-per-node 2`` (gloo, CPU): honoured options give
the one-process result, a refused one stops the job before anything is written.

The table of every CheckpointConfig parameter is tests/train/test_torchrun_options.py; its
honoured rows point at ``test_honoured_options_under_torchrun`` (one launch covers them all).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.distributed import parity_worker
from tests.distributed.launch import ROOT, run, torchrun_cmd, train_cli
from torchresume.cli.main import main
from torchresume.files.single import read_checkpoint
from torchresume.state.train_state import is_training_part


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.ckpt"))


def test_honoured_options_under_torchrun(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """keep_checkpoint_max, keep_checkpoint_per_n_minutes, append_info, enc_key (+ enc_mode), async_save,
    save_checkpoint_steps and save_checkpoint_seconds, each as in one process (parity_worker's runs)."""
    sharded, single = tmp_path / "torchrun", tmp_path / "one"
    sharded.mkdir()
    done = run(torchrun_cmd(2, [str(Path(parity_worker.__file__)), str(sharded)]), ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _, resumed_from = parity_worker.train_runs(str(single))  # the same runs in one process
    assert resumed_from == "par-1_8.ckpt"

    # keep_checkpoint_max=2 exactly, and keep_checkpoint_per_n_minutes=1 (the first and the newest):
    # the same checkpoints kept as in one process
    assert _names(sharded / "enc") == _names(single / "enc") == ["par-2_6.ckpt", "par-2_8.ckpt"]
    assert _names(sharded / "minutes") == _names(single / "minutes") == ["par-1_2.ckpt", "par-1_8.ckpt"]

    # enc_key: every part encrypted, stock safetensors reads none of them
    newest = sharded / "enc" / "par-2_8.ckpt"
    parts = sorted(newest.glob("*.safetensors"))
    assert {p.name for p in parts} >= {"rank-00000.safetensors", "rank-00001.safetensors"}
    for part in parts:
        with pytest.raises(Exception, match="header too large"):
            load_file(str(part))
        assert b"weight" not in part.read_bytes()

    # append_info: the same values as the one-process file, and `torchresume inspect` shows them
    appended = {"epoch_num": 2, "step_num": 16, "run": "parity"}
    assert read_checkpoint(str(newest), dec_key=parity_worker.KEY).append == appended
    assert read_checkpoint(str(single / "enc" / "par-2_8.ckpt"), dec_key=parity_worker.KEY).append == appended
    capsys.readouterr()
    assert main(["inspect", str(newest)]) == 0
    rows = dict(line.split(":", 1) for line in capsys.readouterr().out.splitlines() if not line.startswith(" "))
    shown = {key: value.strip() for key, value in rows.items()}
    assert shown["format"] == "torchresume-directory  (encrypted: pass --dec-key-hex to read it)"
    assert (shown["epoch_num"], shown["step_num"], shown["run"]) == ("2", "16", "parity")

    # `torchresume convert` consolidates it with --dec-key-hex; without the key: the one-line error
    part0 = f"{newest}/shard-00000-0.safetensors"
    assert main(["convert", str(newest), str(tmp_path / "whole.ckpt"), "--dec-key-hex", parity_worker.KEY.hex()]) == 0
    whole = read_checkpoint(str(tmp_path / "whole.ckpt")).tree
    capsys.readouterr()
    assert main(["convert", str(newest), str(tmp_path / "nokey.ckpt")]) == 1
    assert capsys.readouterr().err == (f"torchresume: error: {part0}: the checkpoint is encrypted (AES-GCM); pass "
                                       "--dec-key-hex <the key, as hex>\n")

    # the second epoch resumed (Model.train, resume="auto") from the encrypted checkpoint, and a restore
    # with the key is bitwise the trained weights on both ranks (and the converted file holds them);
    # a wrong key and no key: a typed error on every rank
    for rank in (0, 1):
        result = json.loads((sharded / f"rank{rank}.json").read_text())
        assert result["trained"] == {name: whole[name].flatten().tolist() for name in result["names"]}
        assert result["resumed_from"] == "par-1_8.ckpt"
        assert result["restore_error"] == ""
        assert result["bitwise"] == result["names"] == ["0.bias", "0.weight", "2.bias", "2.weight"]
        assert result["wrong_key"] == (f"DecryptionError: {newest}: decryption failed: the key is wrong (it "
                                       "is not the one this checkpoint was encrypted with)")
        assert result["no_key"] == (f"DecryptionError: {part0}: the checkpoint is encrypted (AES-GCM); "
                                    "pass dec_key=<the key used to save it>")

    # async_save: the background saves committed (kept above), the same weights as the synchronous
    # "seconds" run of the same training
    sync = read_checkpoint(str(sharded / "seconds" / "par-1_8.ckpt")).tree
    background = read_checkpoint(str(sharded / "minutes" / "par-1_8.ckpt")).tree
    model_keys = sorted(k for k in sync if not is_training_part(k))  # read as one: weights at the top level
    assert model_keys == ["0.bias", "0.weight", "2.bias", "2.weight"]
    for key in model_keys:
        assert torch.equal(sync[key], background[key]), key

    # save_checkpoint_seconds=1 with only rank 0 slow: both ranks save at the steps rank 0 found late
    seconds = _names(sharded / "seconds")
    assert seconds[-1] == "par-1_8.ckpt" and ({"par-1_1.ckpt", "par-1_2.ckpt"} & set(seconds)), seconds


def test_best_skip_lock_and_finished_under_torchrun(tmp_path: Path) -> None:
    """monitor= (with mode and keep_best_max), on_busy='skip', the run lock and "already finished"
    under torchrun, from the same launch as above's runs (parity_worker's best_run and skip_run),
    and the run lock against a torchrun CLI job (exit 75 on its ranks)."""
    sharded, single = tmp_path / "torchrun", tmp_path / "one"
    sharded.mkdir()
    done = run(torchrun_cmd(2, [str(Path(parity_worker.__file__)), str(sharded)]), ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [json.loads((sharded / f"rank{r}.json").read_text()) for r in (0, 1)]
    parity_worker.best_run(str(single))
    # best: the same checkpoints kept as in one process: the newest and the one best by loss
    assert _names(sharded / "best") == _names(single / "best")
    assert [n for n in _names(sharded / "best") if "-best-" in n] and "par-2_8.ckpt" in _names(sharded / "best")
    assert all(r["best"] == {"already_finished": True, "global_step": 16} for r in ranks)
    # on_busy='skip': every rank kept and skipped the same saves; the last step's save is committed
    assert ranks[0]["skip_kept"] == ranks[1]["skip_kept"] and len(ranks[0]["skip_kept"]) == 8
    assert "par-1_8.ckpt" in _names(sharded / "skip")
    assert len(_names(sharded / "skip")) == sum(ranks[0]["skip_kept"]) + (not ranks[0]["skip_kept"][-1])

    # the run lock: held here, a torchrun job on the directory stops on every rank with exit 75
    from torchresume import run_lock
    locked = tmp_path / "locked"
    locked.mkdir()
    run_lock.acquire(str(locked))
    try:
        refused = run(torchrun_cmd(2, train_cli(locked, "--epochs", "1", "--steps-per-epoch", "4")), tmp_path)
    finally:
        run_lock.release(str(locked))
    out = refused.stdout + refused.stderr
    assert refused.returncode != 0 and out.count("exitcode  : 75") == 2, out[-3000:]
    assert "torchresume: error:" in out and "another" in out.lower(), out[-3000:]
    assert list(locked.iterdir()) == []  # nothing written (the lock file was ours, gone with its release)


def test_a_refused_option_stops_every_rank_before_anything_is_written(tmp_path: Path) -> None:
    """`torchrun ... -m torchresume train --async-save --write-mb-per-s 50`: a non-zero exit, the one
    line in the CLI's words (from every rank on this branch; rank 0 alone once errors every rank meets
    alike are printed once), and an empty checkpoint directory."""
    train_dir = tmp_path / "ckpt"
    cli = train_cli(train_dir, "--epochs", "1", "--steps-per-epoch", "4", "--save-steps", "2",
                    "--async-save", "--write-mb-per-s", "50")
    start = time.monotonic()
    done = run(torchrun_cmd(2, cli), tmp_path)
    took = time.monotonic() - start
    assert done.returncode != 0
    errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("torchresume: error:")]
    assert errors and set(errors) == {
        "torchresume: error: --write-mb-per-s 50 is not supported under torchrun yet (each rank writes its part "
        "of a sharded save at full speed); drop --write-mb-per-s, or train in one process"}, errors
    frames = [line for line in done.stderr.splitlines() if line.strip().startswith('File "')]
    assert frames and not [f for f in frames if "torchresume" in f], frames  # torchrun's own traceback only
    assert not train_dir.exists() or list(train_dir.iterdir()) == []
    assert took < 60, took  # unloaded ~5 s: the ranks stop at once, no collective timeout (600 s)
