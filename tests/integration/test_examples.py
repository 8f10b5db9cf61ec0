"""The seed ports run as users run them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_seed000_crash_then_resume(tmp_path) -> None:
    script = str(ROOT / "examples" / "seed000_resume.py")
    first = _run([script, "--fail-at-epoch", "4"], tmp_path)
    assert first.returncode != 0 and "simulated failure in epoch 4" in first.stderr
    assert "torchresume: RuntimeError at epoch 4 step 0; breakpoint saved to" in first.stderr
    assert "epoch: 3, loss:" in first.stdout
    assert (tmp_path / "seed000-ckpt" / "net-4_0_breakpoint.ckpt").exists()
    second = _run([script], tmp_path)
    assert second.returncode == 0, second.stderr
    assert "optimizer state of epoch 4 loaded" in second.stdout
    lines = [line for line in second.stdout.splitlines() if line.startswith("epoch:")]
    assert [line.split(",")[0] for line in lines] == [f"epoch: {e}" for e in range(4, 8)]


def test_seed003_main_flow(tmp_path) -> None:
    proc = _run([str(ROOT / "examples" / "seed003_main.py"), "--steps-per-epoch", "30"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    listing = proc.stdout.split("Checkpoints after resuming training:")[1].split()
    assert listing == ["lenet-1_30.ckpt", "lenet-2_30.ckpt", "lenet-graph.json", "lenet_1-1_30.ckpt",
                       "lenet_1-2_30.ckpt", "lenet_1-graph.json"]


def test_quickstart(tmp_path) -> None:
    proc = _run([str(ROOT / "examples" / "quickstart.py")], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "([], [])"


def test_demo_short(tmp_path) -> None:
    proc = _run(["-m", "torchresume", "demo", "--workdir", str(tmp_path / "d"), "--steps-per-epoch", "40"],
                tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "learning rate: 0.001" in proc.stdout
    import torch

    from torchresume.app.demo import cpu_kind
    assert re.search(rf"after resuming \(torch {re.escape(torch.__version__)}, \d+ threads?, CPU "
                     rf"{re.escape(cpu_kind())}: the same", proc.stdout), proc.stdout[-600:]
    assert cpu_kind() and cpu_kind() != "unknown CPU"
    for name in ("prediction.png", "curves.png", "summary.json"):
        assert (tmp_path / "d" / name).stat().st_size > 1000 or name == "summary.json"
    assert sorted(os.listdir(tmp_path / "d" / "ckpt")) == [
        "lenet-1_40.ckpt", "lenet-2_40.ckpt", "lenet-graph.json", "lenet_1-1_40.ckpt",
        "lenet_1-2_40.ckpt", "lenet_1-graph.json"]
