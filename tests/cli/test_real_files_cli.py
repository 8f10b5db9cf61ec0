"""Every CLI command, run as the installed ``torchresume`` in a subprocess, on every kind of file
the project writes: checkpoints of ``train``, of ``Model`` (with a user's DataLoader), of the
``demo``, breakpoints, best-model copies, weights-only, encrypted and converted files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchresume as tr

TR = str(Path(sys.executable).with_name("torchresume"))
KEY = "11" * 16


def run(*args: str, cwd: Path | None = None, check: int | None = 0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([TR, *args], capture_output=True, text=True, cwd=cwd, timeout=600,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert "Traceback" not in proc.stderr, proc.stderr
    if check is not None:
        assert proc.returncode == check, (args, proc.stdout, proc.stderr)
    return proc


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, str]:
    """Files written by real runs: train, demo, Model.fit with a DataLoader, and the API."""
    base = tmp_path_factory.mktemp("files")
    train = base / "train"
    run("train", "--train-url", str(train), "--epochs", "1", "--steps-per-epoch", "12",
        "--save-steps", "6", "--deterministic")
    demo = base / "demo"
    run("demo", "--workdir", str(demo), "--steps-per-epoch", "4")
    fit = base / "fit"
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    data = TensorDataset(torch.randn(40, 4), torch.randint(0, 3, (40,)))
    loader = DataLoader(data, batch_size=8, shuffle=True)
    model = tr.Model(net, nn.CrossEntropyLoss(), torch.optim.Adam(net.parameters()), {"acc"})
    cfg = tr.CheckpointConfig(save_checkpoint_steps=5, keep_checkpoint_max=5, monitor="acc")
    model.fit(2, loader, DataLoader(data, batch_size=20), callbacks=[tr.ModelCheckpoint("mlp", str(fit), cfg)])
    weights = base / "weights.ckpt"
    tr.save_checkpoint(net, str(weights))
    enc = base / "enc.ckpt"
    tr.save_checkpoint(net, str(enc), enc_key=bytes.fromhex(KEY))
    pt = base / "w.pt"
    torch.save(net.state_dict(), pt)
    best = sorted(fit.glob("mlp-best-*.ckpt"))
    assert best, sorted(p.name for p in fit.iterdir())
    return {"train_a": str(train / "lenet-1_6.ckpt"), "train_b": str(train / "lenet-1_12.ckpt"),
            "train_dir": str(train), "demo_a": str(demo / "ckpt" / "lenet-2_4.ckpt"),
            "demo_b": str(demo / "ckpt" / "lenet_1-2_4.ckpt"), "demo_dir": str(demo / "ckpt"),
            "fit_a": str(fit / "mlp-1_5.ckpt"), "fit_b": str(fit / "mlp-2_5.ckpt"),
            "fit_best": str(best[0]), "fit_dir": str(fit), "weights": str(weights),
            "enc": str(enc), "pt": str(pt), "base": str(base)}


CKPTS = ["train_a", "demo_a", "fit_a", "fit_best", "weights", "pt"]


@pytest.mark.parametrize("kind", CKPTS)
def test_diff_with_itself_is_identical(made, kind) -> None:
    out = run("diff", made[kind], made[kind]).stdout
    assert out == "identical: same tensors, values and metadata\n"


@pytest.mark.parametrize(("a", "b", "changed"), [("train_a", "train_b", "~ conv1.weight  max|a-b|="),
                                                 ("demo_a", "demo_b", "~ fc3.bias  max|a-b|="),
                                                 ("fit_a", "fit_b", "~ 0.weight  max|a-b|=")])
def test_diff_of_two_checkpoints_of_a_run(made, a, b, changed) -> None:
    lines = run("diff", made[a], made[b], check=1).stdout.splitlines()
    assert any(line.startswith(changed) for line in lines), lines
    assert any(line.startswith("~ optimizer.state.0.") for line in lines), lines
    assert all(len(line) < 200 for line in lines)


@pytest.mark.parametrize("kind", CKPTS)
def test_inspect_verify(made, kind) -> None:
    text = run("inspect", made[kind]).stdout
    assert "<tuple of 625" not in text and "(3, (" not in text
    doc = json.loads(run("inspect", made[kind], "--json").stdout)
    assert doc["path"] == made[kind] and doc["tensors"]
    assert run("verify", made[kind]).stdout == f"OK       {made[kind]}\n"


def test_inspect_is_readable(made) -> None:
    lines = run("inspect", made["train_b"]).stdout.splitlines()
    labels = [line for line in lines if not line.startswith(" ") and ":" in line and line != "values:"]
    starts = {len(line) - len(line.split(":", 1)[1].lstrip()) for line in labels}
    assert len(starts) == 1  # every value starts in the same column
    time_line = next(line for line in lines if line.startswith("time:"))
    saved = json.loads(run("inspect", made["train_b"], "--json").stdout)["info"]["time"]
    assert abs(datetime.fromisoformat(time_line.split()[1]).timestamp() - saved) < 1
    assert "  rng.* = <random generator states: python, numpy; --json shows them>" in lines


def test_inspect_into_a_closed_pipe_is_quiet(made) -> None:
    proc = subprocess.run(f"'{TR}' inspect '{made['demo_a']}' | head -1", shell=True, capture_output=True,
                          text=True)
    assert proc.stdout.startswith("file:") and proc.stderr == ""


def test_encrypted_file_names_the_cli_flag(made) -> None:
    proc = run("verify", made["enc"], check=1)
    assert proc.stdout == (f"INVALID  {made['enc']}: the checkpoint is encrypted (AES-GCM); "
                           "pass --dec-key-hex <the key, as hex>\n")
    assert run("verify", made["enc"], "--dec-key-hex", KEY).stdout == f"OK       {made['enc']}\n"


@pytest.mark.parametrize("kind", ["train_dir", "demo_dir", "fit_dir"])
def test_ls_lists_newest_valid_first(made, kind) -> None:
    lines = run("ls", made[kind]).stdout.splitlines()
    assert lines[0].split() == ["name", "epoch", "step", "size", "status"]
    assert all(line.endswith("valid") for line in lines[1:])
    doc = json.loads(run("ls", made[kind], "--json").stdout)
    times = [e["saved_at"] for e in doc]
    assert times == sorted(times, reverse=True)


def test_ls_puts_invalid_files_after_valid_ones(made, tmp_path) -> None:
    run("copy", made["train_dir"], str(tmp_path))
    (tmp_path / "lenet-9_99.ckpt").write_bytes(b"x" * 100)
    names = [line.split()[0] for line in run("ls", str(tmp_path)).stdout.splitlines()[1:]]
    assert names == ["lenet-1_12.ckpt", "lenet-1_6.ckpt", "lenet-9_99.ckpt"]


def test_ls_of_a_missing_place_is_an_error(tmp_path) -> None:
    proc = run("ls", str(tmp_path / "nope"), check=1)
    assert proc.stderr == f"torchresume: error: {tmp_path / 'nope'}: no such directory\n"
    proc = run("ls", "s3:/bad", check=2)
    assert proc.stderr == ("torchresume: error: directory 's3:/bad' looks like a URL with a missing slash: write "
                           "'s3://bad' (or ./s3:/bad for a local folder of that name) (see: torchresume ls --help)\n")


@pytest.mark.parametrize("kind", ["train_a", "demo_b", "fit_best", "pt", "enc"])
def test_convert_refuses_to_overwrite(made, kind, tmp_path) -> None:
    dst = str(tmp_path / "out.ckpt")
    extra = ["--dec-key-hex", KEY] if kind == "enc" else []
    assert run("convert", made[kind], dst, *extra).stdout.startswith(f"wrote {dst} (")
    proc = run("convert", made[kind], dst, *extra, check=1)
    assert proc.stderr == f"torchresume: error: {dst} exists; pass --force to overwrite it\n"
    run("convert", made[kind], dst, *extra, "--force")
    if kind != "enc":
        assert run("diff", made[kind], dst, check=None).stdout.count("\n") >= 1
    assert run("verify", dst).returncode == 0


@pytest.mark.parametrize("kind", ["train_a", "demo_a", "fit_a"])
def test_copy_file_into_a_directory(made, kind, tmp_path) -> None:
    out = run("copy", made[kind], str(tmp_path) + "/").stdout
    assert out.startswith("copied 1 files (")
    copied = tmp_path / Path(made[kind]).name
    assert run("diff", made[kind], str(copied)).stdout == "identical: same tensors, values and metadata\n"


def test_prune_keeps_the_newest(made, tmp_path) -> None:
    run("copy", made["demo_dir"], str(tmp_path))
    out = run("prune", str(tmp_path), "--keep", "1").stdout.splitlines()
    assert sorted(out) == [f"deleted {tmp_path}/lenet-1_4.ckpt", f"deleted {tmp_path}/lenet_1-1_4.ckpt"]


@pytest.mark.parametrize("kind", ["train_b", "demo_a", "demo_b"])
def test_eval_and_infer_of_lenet_checkpoints(made, kind, tmp_path) -> None:
    metrics = json.loads(run("eval", "--ckpt", made[kind]).stdout)
    assert metrics["ckpt"] == made[kind] and 0 <= metrics["acc"] <= 1
    png = str(tmp_path / "p.png")
    assert run("infer", "--ckpt", made[kind], "--out", png).stdout.startswith(f"wrote {png}: ")


@pytest.mark.parametrize("command", ["eval", "infer"])
def test_eval_and_infer_refuse_a_checkpoint_that_does_not_fit(made, command, tmp_path) -> None:
    proc = run(command, "--model", "mlp", "--ckpt", made["train_b"], "--out", str(tmp_path / "x.png"),
               check=1) if command == "infer" else run(command, "--model", "mlp", "--ckpt", made["train_b"],
                                                       check=1)
    assert proc.stdout == ""
    err = proc.stderr
    assert err.startswith(f"torchresume: error: {made['train_b']} does not fit --model mlp (pick the --model "
                          "it was trained with): strict load failed; nothing was loaded:")
    assert "missing from checkpoint (6): dense_relu_sequential.0.weight" in err
    assert "not in the network (8): conv1.weight, conv2.weight" in err
    proc = run(command, "--ckpt", made["fit_a"], *(["--out", str(tmp_path / "y.png")] if command == "infer" else []),
               check=1)
    assert "does not fit --model lenet5" in proc.stderr
