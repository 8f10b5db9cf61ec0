"""Issue 34, "what a new user hit, round three": the command line's items, in-process (one short
mlp run shared by the module)."""

from __future__ import annotations

import json
import os
import re
import runpy
from pathlib import Path

import pytest
import torch

from tests.docs_blocks import ROOT, blocks_of
from torchresume import openmp
from torchresume.cli import training
from torchresume.cli.files import short_name
from torchresume.cli.main import main

TRAIN = ["train", "--model", "mlp", "--epochs", "1", "--steps-per-epoch", "4", "--save-steps", "2",
         "--threads", "1", "--deterministic"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """The same mlp command trained twice, into two directories."""
    where = tmp_path_factory.mktemp("runs")
    for name in ("a", "b"):
        assert main([*TRAIN, "--train-url", str(where / name)]) == 0
    return where / "a", where / "b"


# -- 6: eval and infer read the network from the checkpoint ---------------------------------------
def test_eval_and_infer_take_the_model_the_checkpoint_records(runs, tmp_path, capsys) -> None:
    ckpt = str(runs[0] / "mlp-1_4.ckpt")
    capsys.readouterr()
    assert main(["eval", "--ckpt", ckpt, "--threads", "1"]) == 0  # no --model: the checkpoint says mlp
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["ckpt"] == ckpt and 0 <= metrics["acc"] <= 1
    png = str(tmp_path / "p.png")
    assert main(["infer", "--ckpt", ckpt, "--out", png, "--threads", "1"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {png}: ")
    assert main(["eval", "--ckpt", ckpt, "--model", "lenet5", "--threads", "1"]) == 1  # --model still overrides
    assert f"{ckpt} does not fit --model lenet5 (pick the --model it was trained with)" in capsys.readouterr().err


def test_a_checkpoint_without_a_recorded_model_means_lenet5() -> None:
    assert training.saved_model({"config": {"model": "mlp"}}) == "mlp"
    assert training.saved_model({}) == "lenet5"
    assert training.saved_model({"config": {"model": "resnet"}}) == "lenet5"  # not one of ours


# -- 8: diff is an equality check ------------------------------------------------------------------
def test_diff_ignores_run_specific_metadata_unless_all(runs, capsys) -> None:
    a, b = str(runs[0] / "mlp-1_4.ckpt"), str(runs[1] / "mlp-1_4.ckpt")
    capsys.readouterr()
    assert main(["diff", a, b]) == 0
    assert capsys.readouterr().out == ("same tensors, values and metadata; run-specific metadata differs "
                                       "(info.config.train_url, info.time; --all compares it)\n")
    assert main(["diff", "--all", a, b]) == 1
    out = capsys.readouterr().out
    assert "~ info.config.train_url" in out and out.endswith("same tensors and values; metadata differs\n")
    assert main(["diff", str(runs[0] / "mlp-1_2.ckpt"), b]) == 1  # what a run computed still counts
    assert "~ info.global_step  2 -> 4" in capsys.readouterr().out


def test_diff_help_lists_what_it_ignores(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["diff", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "info.time, info.prefix, info.config.train_url" in help_text and "--all" in help_text


# -- 10: small things ------------------------------------------------------------------------------
def test_long_callback_state_names_are_shortened_for_people() -> None:
    key = ("callbacks.TorchResumeCheckpoint{'monitor': None, 'mode': 'min', 'every_n_train_steps': 3, "
           "'every_n_epochs': 0, 'train_time_interval': None}.best_model_score")
    assert short_name(key) == "callbacks.TorchResumeCheckpoint{'monitor': None, 'mode': 'min', ...}.best_model_score"
    short = "callbacks.EarlyStopping{'monitor': 'loss'}.wait"
    assert short_name(short) == short


def test_the_readme_train_py_says_when_it_is_already_finished(tmp_path, monkeypatch, capsys) -> None:
    block = next(b for b in blocks_of(ROOT / "README.md") if b.title == "train.py")
    (tmp_path / "train.py").write_text(block.code)
    monkeypatch.chdir(tmp_path)
    runpy.run_path("train.py", run_name="__main__")
    assert capsys.readouterr().out.endswith("steps 1 to 400 done\n")
    runpy.run_path("train.py", run_name="__main__")
    out = capsys.readouterr().out
    assert "401 to 400" not in out and out.endswith("already finished: 400 steps done\n")


def test_one_thread_is_one_thread(tmp_path, capsys) -> None:
    from torchresume.app.demo import _threads
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert _threads() == "1 thread"
        torch.set_num_threads(2)
        assert _threads() == "2 threads"
    finally:
        torch.set_num_threads(before)
    assert training.plural(1, "core") == "1 core"


# -- 5: the main job's threads ---------------------------------------------------------------------
def test_the_default_threads_follow_openmps_waiting_and_are_printed(monkeypatch, capsys) -> None:
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(training, "idle_cores", lambda s: 0.1)  # CPU-bound neighbours on every core
    try:
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_WAIT_POLICY", "passive")  # the command's: a thread that waits sleeps
        training.set_threads(None)
        assert torch.get_num_threads() == 2
        assert "CPU threads: 2 (chosen: torch's default, OpenMP waits passively; --threads N to change)" in (
            capsys.readouterr().out)
        monkeypatch.setenv("OMP_WAIT_POLICY", "active")  # the user's: spinning threads need idle cores
        training.set_threads(None)
        assert torch.get_num_threads() == 1
        assert "CPU threads: 1 (chosen: 0.1 of " in capsys.readouterr().out
        torch.set_num_threads(2)
        monkeypatch.setattr(training, "idle_cores", lambda s: 1.8)  # an idle machine
        assert training.choose_threads()[0] == 2
        monkeypatch.setattr(training, "idle_cores", lambda s: None)  # no /proc/stat
        assert training.choose_threads() == (2, "torch's default")
    finally:
        torch.set_num_threads(before)


def test_idle_cores_reads_proc_stat() -> None:
    if not os.path.exists("/proc/stat"):
        pytest.skip("no /proc/stat here")
    idle = training.idle_cores(0.05)
    assert idle is not None and 0 <= idle <= len(os.sched_getaffinity(0)) + 0.01


@pytest.mark.parametrize(("argv", "command"), [
    (["/venv/bin/python", "/venv/bin/torchresume", "demo"], True),
    (["python", "-m", "torchresume", "train"], True),
    (["python", "-u", "-X", "importtime", "-m", "torchresume", "train"], True),
    (["python", "-m", "pytest", "tests"], False),
    (["python", "train.py"], False),
    (["python", "-c", "import torchresume"], False),
])
def test_openmp_waits_passively_only_for_the_command_line(argv, command, monkeypatch) -> None:
    assert openmp.is_command_line(argv) is command
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr("sys.orig_argv", argv)
    monkeypatch.delitem(__import__("sys").modules, "torch")  # as before torch loads
    openmp.set_wait_policy()
    assert os.environ.get("OMP_WAIT_POLICY") == ("passive" if command else None)
    monkeypatch.setenv("OMP_WAIT_POLICY", "active")  # the user's choice stays
    openmp.set_wait_policy()
    assert os.environ["OMP_WAIT_POLICY"] == "active"


# -- 9: docs that fail -----------------------------------------------------------------------------
def test_no_page_installs_torchresume_from_the_package_index() -> None:
    """torchresume is not on the index: `pip install 'torchresume[x]'` fails; pages say -e from a checkout."""
    pages = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]
    wrong = [str(p.relative_to(ROOT)) for p in pages
             if re.search(r"pip install ['\"]?torchresume\b", p.read_text())]
    assert wrong == []
