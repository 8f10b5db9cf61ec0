"""Issue 20, "what a new user hit, round two": each defect through the installed ``torchresume``
command in a subprocess, as the user ran it. One training run is shared (module fixture)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import torchresume as tr
from torchresume.app.models import LeNet5

TR = str(Path(sys.executable).with_name("torchresume"))
KEY = "00112233445566778899aabbccddeeff"


def run(*args: str, check: int | None = 0, cwd: Path | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([TR, *args], capture_output=True, text=True, timeout=600, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **(env or {})})
    assert "Traceback" not in proc.stderr, proc.stderr
    if check is not None:
        assert proc.returncode == check, (args, proc.stdout, proc.stderr)
    return proc


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one line of stderr, without its prefix."""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("torchresume: error: "), proc.stderr
    return proc.stderr.removeprefix("torchresume: error: ").rstrip("\n")


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.fixture(scope="module")
def r1(tmp_path_factory) -> Path:
    """The issue's run: 30 deterministic steps, one checkpoint."""
    where = tmp_path_factory.mktemp("r1") / "r1"
    run("train", "--train-url", str(where), "--epochs", "1", "--steps-per-epoch", "30", "--deterministic",
        "--threads", "1")
    return where


# -- 1: never a silent fresh start ---------------------------------------------------------------
def test_an_all_damaged_run_stops_naming_the_files_and_the_way_out(r1, tmp_path) -> None:
    run_dir = tmp_path / "r1"
    shutil.copytree(r1, run_dir)
    ckpt = run_dir / "lenet-1_30.ckpt"
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    os.chmod(ckpt, 0o600)
    ckpt.write_bytes(bytes(data))
    before = tree(run_dir)
    for _ in range(2):  # the same command, again: the same answer, never a run 'lenet_1'
        proc = run("train", "--train-url", str(run_dir), "--epochs", "2", "--steps-per-epoch", "30",
                   "--deterministic", check=1)
        line = one_line(proc)
        assert line.startswith(f"{run_dir}: no checkpoint of the run can be read (lenet-1_30.ckpt; the newest: ")
        assert line.endswith("nothing to resume from: put back a good copy, or start over with --resume none "
                             "(the damaged files are kept)")
        assert tree(run_dir) == before


def test_resume_from_a_directory_without_checkpoints_is_an_error(tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run("train", "--train-url", str(tmp_path / "run"), "--resume", str(empty), "--epochs", "1",
               "--steps-per-epoch", "3", check=1)
    assert one_line(proc) == (f"{empty} holds no checkpoint to resume from; name a directory or file that holds "
                              "one, or start over with --resume none")
    assert not (tmp_path / "run").exists() or not list((tmp_path / "run").glob("*.ckpt"))


# -- 2: no tracebacks ----------------------------------------------------------------------------
@pytest.mark.parametrize("command", [["train", "--epochs", "1"], ["eval", "--ckpt", "x.ckpt"]])
def test_an_unknown_device_is_one_line(command, tmp_path) -> None:
    proc = run(*command, "--device", "tpu", check=2, cwd=tmp_path)
    assert one_line(proc) == (f"--device must be one of auto, cpu, cuda (or cuda:N), got 'tpu' "
                              f"(see: torchresume {command[0]} --help)")
    assert tree(tmp_path) == []


# -- 3: every command that reads a checkpoint takes the key options --------------------------------
@pytest.fixture(scope="module")
def encrypted(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("enc")
    torch.manual_seed(0)
    tr.save_checkpoint(LeNet5(), str(where / "lenet-1_1.ckpt"), enc_key=bytes.fromhex(KEY))
    return where / "lenet-1_1.ckpt"


def test_inspect_eval_diff_ls_infer_take_the_key(encrypted, tmp_path) -> None:
    path = str(encrypted)
    locked = run("inspect", path).stdout
    assert "(encrypted: pass --dec-key-hex to read it)" in locked
    text = run("inspect", path, "--dec-key-hex", KEY).stdout
    assert re.search(r"^kind: +model$", text, re.M) and "conv1.weight" in text
    metrics = run("eval", "--ckpt", path, "--dec-key-hex", KEY).stdout
    assert '"acc":' in metrics
    assert run("diff", path, path, "--dec-key-hex", KEY).stdout == "identical: same tensors, values and metadata\n"
    assert run("ls", str(encrypted.parent), "--dec-key-hex", KEY).stdout.splitlines()[1].endswith("valid")
    png = tmp_path / "p.png"
    assert run("infer", "--ckpt", path, "--dec-key-hex", KEY, "--out", str(png)).stdout.startswith(f"wrote {png}")


# -- 4: values that cannot work are refused while parsing ---------------------------------------------
@pytest.mark.parametrize(("option", "value", "message"), [
    ("--lr", "nan", "--lr must be a finite number above 0, got nan"),
    ("--lr", "inf", "--lr must be a finite number above 0, got inf"),
    ("--lr", "-1", "--lr must be a finite number above 0, got -1"),  # was torch's "Invalid learning rate: -1.0"
    ("--momentum", "nan", "--momentum must be a finite number at least 0 and below 1, got nan")])
def test_a_value_that_cannot_train_is_refused_before_anything_is_written(option, value, message, tmp_path) -> None:
    proc = run("train", "--train-url", str(tmp_path / "run"), option, value, check=2, cwd=tmp_path)
    assert one_line(proc) == f"{message} (see: torchresume train --help)"
    assert tree(tmp_path) == []


def test_crc_without_mindspore_output_is_refused(encrypted, tmp_path) -> None:
    proc = run("convert", str(encrypted), str(tmp_path / "out.ckpt"), "--dec-key-hex", KEY, "--crc", check=2)
    assert one_line(proc) == ("--crc applies to MindSpore files only; add --to mindspore (a native file has "
                              "per-tensor checksums and is encrypted with AES-GCM) (see: torchresume convert --help)")
    assert tree(tmp_path) == []


def test_a_url_with_one_slash_is_refused_not_made_a_folder(tmp_path) -> None:
    proc = run("train", "--train-url", "s3:/bucket/run", "--epochs", "1", check=2, cwd=tmp_path)
    assert one_line(proc) == ("--train-url 's3:/bucket/run' looks like a URL with a missing slash: write "
                              "'s3://bucket/run' (or ./s3:/bucket/run for a local folder of that name) "
                              "(see: torchresume train --help)")
    assert tree(tmp_path) == []


def test_convert_into_a_missing_folder_is_refused(encrypted, tmp_path) -> None:
    dst = tmp_path / "no" / "such" / "out.ckpt"
    proc = run("convert", str(encrypted), str(dst), "--dec-key-hex", KEY, check=1)
    assert one_line(proc) == (f"{dst}: the folder {dst.parent} does not exist; create it first "
                              f"(mkdir -p {dst.parent})")
    assert tree(tmp_path) == []


@pytest.mark.parametrize(("args", "message"), [
    (["train", "--train-url", "afile/run", "--epochs", "1", "--steps-per-epoch", "2"],
     "afile/run: a part of this path is a file, not a directory"),  # was "[Errno 20] Not a directory: ..."
    (["verify", "afile", "--dec-key-hex", "zz"],
     "--dec-key-hex must be the key as hex digits, two per byte (e.g. 16 bytes: 32 digits 0-9a-f), got 'zz' "
     "(see: torchresume verify --help)")])  # was "non-hexadecimal number found in fromhex() arg"
def test_python_texts_are_replaced_by_what_to_fix(args, message, tmp_path) -> None:
    (tmp_path / "afile").write_text("not a directory")
    proc = run(*args, check=None, cwd=tmp_path)
    assert one_line(proc) == message
    assert tree(tmp_path) == ["afile"]


# -- 5: exit codes and conventions -------------------------------------------------------------------
def test_a_bad_option_value_exits_2(tmp_path) -> None:
    proc = run("train", "--epochs", "0", check=2, cwd=tmp_path)
    assert one_line(proc) == "--epochs must be at least 1, got 0 (see: torchresume train --help)"


def test_prune_of_a_missing_directory_is_an_error(tmp_path) -> None:
    proc = run("prune", str(tmp_path / "nonexistent"), "--keep", "1", check=1)
    assert one_line(proc) == f"{tmp_path / 'nonexistent'}: no such directory"


def test_diff_exits_1_when_files_differ_and_names_metadata(tmp_path) -> None:
    net = LeNet5()
    a, b = str(tmp_path / "a.ckpt"), str(tmp_path / "b.ckpt")
    tr.save_checkpoint(net, a, append_dict={"note": "first"})
    tr.save_checkpoint(net, b, append_dict={"note": "second"})  # the same weights
    same = run("diff", a, a)
    assert same.stdout == "identical: same tensors, values and metadata\n"
    differ = run("diff", a, b, check=1)
    assert differ.stdout.splitlines() == ["~ append.note  'first' -> 'second'",
                                          "same tensors and values; metadata differs"]


def test_version() -> None:
    from importlib.metadata import version
    assert run("--version").stdout == f"torchresume {version('torchresume')}\n"


def test_ls_says_when_weights_are_not_finite(tmp_path) -> None:
    net = torch.nn.Linear(2, 2)
    with torch.no_grad():
        net.weight.fill_(float("nan"))
    tr.save_checkpoint(net, str(tmp_path / "run-1_1.ckpt"))
    lines = run("ls", str(tmp_path)).stdout.splitlines()
    assert lines[1].endswith("valid, non-finite (NaN or Inf weights: the run diverged)"), lines


# -- 6: threads --------------------------------------------------------------------------------------
def test_the_thread_count_is_set_and_printed(r1, tmp_path) -> None:
    """--threads N sets it; without it the count and where it came from are printed."""
    out = run("train", "--train-url", str(r1), "--epochs", "1", "--steps-per-epoch", "30", "--threads", "1").stdout
    assert out.startswith("torchresume: CPU threads: 1 (--threads)\n")
    out = run("train", "--train-url", str(r1), "--epochs", "1", "--steps-per-epoch", "30",
              env={"OMP_NUM_THREADS": "1"}).stdout
    assert out.startswith("torchresume: CPU threads: 1 (OMP_NUM_THREADS)\n")


def test_the_signal_line_offers_a_second_ctrl_c_only_for_sigint(capsys) -> None:
    from types import SimpleNamespace

    from torchresume.train.model import _signal_catcher
    catcher = _signal_catcher(SimpleNamespace(stop_signal=None), enabled=False)  # type: ignore[arg-type]
    assert catcher._on_signal is not None
    catcher._on_signal(signal.SIGTERM)
    catcher._on_signal(signal.SIGINT)
    err = capsys.readouterr().err
    assert "torchresume: SIGTERM received; stopping after this step\n" in err
    assert "torchresume: SIGINT received; stopping after this step (Ctrl-C again to abort)\n" in err


def test_every_option_has_help_and_shows_its_default() -> None:
    import argparse

    from torchresume.cli.main import build_parser
    parser = build_parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for command, p in sub.choices.items():
        for action in p._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS or "-h" in action.option_strings:
                continue
            assert action.help, (command, action.option_strings)
            shown = action.default not in (None, [], argparse.SUPPRESS) and action.default is not False
            if shown:  # "(default: 32)" or the help's own words for it
                assert "default" in p._get_formatter()._expand_help(action), (command, action.option_strings)
    assert "SGD learning rate (default: 0.01)" in " ".join(sub.choices["train"].format_help().split())
    assert "checkpoints of each prefix to keep" in sub.choices["prune"].format_help()
