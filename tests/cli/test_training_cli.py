"""train / eval / infer as a user runs them (short runs on the bundled MNIST)."""

from __future__ import annotations

import json

import pytest

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
    assert main(["ls", str(tmp_path), "--storage-option", "novalue"]) == 2
    assert capsys.readouterr().err == (
        "torchresume: error: --storage-option must be KEY=VALUE (KEY may be dotted: "
        "config_kwargs.s3.payload_signing_enabled=true), got 'novalue' (see: torchresume ls --help)\n")
    assert main(["ls", str(tmp_path), "--storage-option", "config_kwargs=x",
                 "--storage-option", "config_kwargs.s3.addressing_style=path"]) == 2
    assert capsys.readouterr().err == ("torchresume: error: --storage-option "
                                       "'config_kwargs.s3.addressing_style=path': 'config_kwargs' was given "
                                       "a value already (see: torchresume ls --help)\n")


def test_dotted_storage_options_nest_and_type_botocore_settings() -> None:
    from torchresume.cli.main import parse_storage_options
    with pytest.raises(ValueError, match="'config_kwargs' already holds dotted settings"):
        parse_storage_options(["config_kwargs.s3.x=1", "config_kwargs=x"])
    assert parse_storage_options(["c.n=-12", "c.m=--5"]) == {"c": {"n": -12, "m": "--5"}}
    assert parse_storage_options(["key=0123", "endpoint_url=http://127.0.0.1:9000",
                                  "config_kwargs.s3.payload_signing_enabled=TRUE",
                                  "config_kwargs.s3.addressing_style=path",
                                  "config_kwargs.max_pool_connections=20"]) == {
        "key": "0123", "endpoint_url": "http://127.0.0.1:9000",
        "config_kwargs": {"s3": {"payload_signing_enabled": True, "addressing_style": "path"},
                          "max_pool_connections": 20}}


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


def test_second_trainer_on_a_locked_directory(tmp_path) -> None:
    """Two `torchresume train` into one directory: the second exits 75 with one line; the first is unharmed."""
    import os
    import signal
    import subprocess
    import sys
    exe = os.path.join(os.path.dirname(sys.executable), "torchresume")
    run = str(tmp_path / "run")
    # the first run trains "forever"; once the second has been refused, SIGTERM stops it the normal way
    args = [exe, "train", "--model", "lenet5", "--epochs", "1", "--steps-per-epoch", "100000",
            "--save-steps", "500", "--train-url", run, "--print-every", "50"]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert first.stdout is not None
    for line in first.stdout:  # wait until the first run is really training
        if "step: 50" in line or "step: 100" in line:
            break
    second = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert first.poll() is None, "the first run stopped while the second one started"
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=300)
    assert second.returncode == 75, second.stderr
    lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith(f"torchresume: error: {run} is in use by another training run (pid {first.pid} on ")
    assert "Traceback" not in second.stderr
    assert first.returncode == 143, err  # stopped by our SIGTERM after saving, not harmed by the second run
    from torchresume.catalog import list_checkpoints
    entries = list_checkpoints(run, verify=True)
    assert entries and all(e.valid for e in entries) and entries[0].global_step >= 50
