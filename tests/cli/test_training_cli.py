"""train / eval / infer as a user runs them (short runs on the bundled MNIST)."""

from __future__ import annotations

import json

from torchresume.cli.main import main


def test_train_eval_infer(tmp_path, capsys) -> None:
    run = str(tmp_path / "run")
    assert main(["train", "--train-url", run, "--epochs", "1", "--steps-per-epoch", "60",
                 "--save-steps", "30"]) == 0
    out = capsys.readouterr().out
    assert "done: 60 steps; latest checkpoint" in out and "lenet-1_60.ckpt" in out
    ckpt = f"{run}/lenet-1_60.ckpt"
    assert main(["eval", "--ckpt", ckpt]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["ckpt"] == ckpt and 0.5 < metrics["acc"] <= 1.0 and metrics["loss"] > 0
    png = str(tmp_path / "p.png")
    assert main(["infer", "--ckpt", ckpt, "--out", png]) == 0
    assert f"wrote {png}:" in capsys.readouterr().out
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_bad_usage_is_exit_2(capsys) -> None:
    import pytest
    with pytest.raises(SystemExit) as exc:
        main(["train", "--save-steps", "5", "--save-seconds", "5"])
    assert exc.value.code == 2


def test_bad_storage_option(tmp_path, capsys) -> None:
    assert main(["ls", str(tmp_path), "--storage-option", "novalue"]) == 1
    assert "--storage-option must be KEY=VALUE, got 'novalue'" in capsys.readouterr().err


def test_resume_with_changed_settings_says_so(tmp_path, capsys) -> None:
    run = str(tmp_path / "run")
    base = ["train", "--train-url", run, "--epochs", "2", "--steps-per-epoch", "20", "--save-steps", "10"]
    assert main([*base[:3], "--epochs", "1", *base[5:]]) == 0
    capsys.readouterr()
    assert main([*base, "--lr", "0.001"]) == 0
    err = capsys.readouterr().err
    assert "was saved with epochs=1 (now 2), lr=0.01 (now 0.001); the resumed state" in err
    # ...and it does follow the checkpoint: the run ends where an uninterrupted lr=0.01 run ends
    ref = str(tmp_path / "ref")
    assert main(["train", "--train-url", ref, *base[3:]]) == 0
    import torch

    from torchresume import load_checkpoint
    got, want = load_checkpoint(f"{run}/lenet-2_20.ckpt"), load_checkpoint(f"{ref}/lenet-2_20.ckpt")
    assert got["optimizer.param_groups.0.lr"] == 0.01
    tensors = [k for k, v in want.items() if isinstance(v, torch.Tensor)]
    assert [k for k in tensors if not torch.equal(got[k], want[k])] == []
