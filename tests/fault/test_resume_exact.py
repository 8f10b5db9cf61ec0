"""Real processes, real signals: a killed and restarted run ends bitwise where an uninterrupted one ends."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import torchresume as tr
from tests.fault import killing
from torchresume import inspection
from torchresume.inspection import verify

EPOCHS, STEPS = 3, 20
LOSS_LINE = re.compile(r"^epoch: \d+ step: \d+, loss is ")  # LossMonitor, one per step with --print-every 1
TOTAL = EPOCHS * STEPS


def _cmd(run_dir: Path, save_steps: int = 5, mode: str = "sync") -> list[str]:
    return [sys.executable, "-m", "torchresume", "train", "--deterministic", "--epochs", str(EPOCHS),
            "--steps-per-epoch", str(STEPS), "--save-steps", str(save_steps), "--keep-max", "3",
            "--train-url", str(run_dir), "--print-every", "1000", *MODES[mode]]


# "paced": background writes held to 1 MB/s, so each stays in flight for about a second.
MODES = {"sync": [], "async": ["--async-save"], "paced": ["--async-save", "--write-mb-per-s", "1"]}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    path = run_dir / "summary.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by SIGKILL
        if r.get("kind") == "step":
            out.append((r["global_step"], r["loss"]))
    return out


def _final(run_dir: Path) -> dict[str, torch.Tensor]:
    # A run killed before its first checkpoint leaves only lenet-graph.json; its restart is a fresh
    # run under the same prefix (only committed checkpoints take a prefix), so one final file.
    finals = sorted(run_dir.glob(f"lenet*-{EPOCHS}_{STEPS}.ckpt"))
    assert len(finals) == 1, finals
    d = tr.load_checkpoint(str(finals[0]))
    return {k: v for k, v in d.items() if isinstance(v, torch.Tensor)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[dict[str, torch.Tensor], dict[int, float]]:
    run = tmp_path_factory.mktemp("reference")
    subprocess.run(_cmd(run), check=True, env=_env(), capture_output=True)
    losses = dict(_losses(run))
    assert sorted(losses) == list(range(1, TOTAL + 1))
    return _final(run), losses


def _print_every_step(cmd: list[str]) -> list[str]:
    i = cmd.index("--print-every")
    return [*cmd[:i + 1], "1", *cmd[i + 2:]]


def _run_until(run_dir: Path, cmd: list[str], min_step: int, delay: float, sig: int) -> int:
    """Signal the process once *it* has printed ``min_step`` completed steps (its own stdout, flushed
    per step; the summary log is buffered and may hold earlier runs' lines)."""
    child = killing.Child(_print_every_step(cmd), LOSS_LINE)
    if child.wait_new_steps(min_step):
        time.sleep(delay)
        child.proc.send_signal(sig)
    rc = child.finish()
    assert "Traceback" not in child.stderr or sig == signal.SIGKILL, child.stderr
    return rc


def _finish(run_dir: Path, cmd: list[str]) -> str:
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _assert_same(run_dir: Path, reference) -> None:
    ref_final, ref_losses = reference
    final = _final(run_dir)
    assert set(final) == set(ref_final)
    for name, t in ref_final.items():
        if name.startswith("rng."):
            continue
        assert torch.equal(final[name], t), name
    for step, loss in _losses(run_dir):
        assert loss == ref_losses[step], f"loss at global step {step} differs after resume"


@pytest.mark.parametrize(("where", "min_step"), [("before first checkpoint", 2), ("mid-epoch", 12),
                                                 ("epoch boundary", 20), ("late", 47)])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_sigkill_then_same_command_is_bitwise_exact(tmp_path, reference, where, min_step, mode) -> None:
    cmd = _cmd(tmp_path, mode=mode)
    _run_until(tmp_path, cmd, min_step, 0.0, signal.SIGKILL)
    out = _finish(tmp_path, cmd)
    if min_step >= 5:
        assert "resumed from" in out
    _assert_same(tmp_path, reference)


@pytest.mark.parametrize("mode", ["sync", "async", "paced"])
def test_twenty_random_kills(tmp_path, reference, mode) -> None:
    """20 SIGKILLs, each after new steps of the restarted process (its own stdout, not the log),
    aimed alternately at a checkpoint write in flight (a background one with async saves) and at
    training between saves."""
    cmd = _print_every_step(_cmd(tmp_path, save_steps=2, mode=mode))  # one progress line per step

    def committed_files_verify(run_dir: Path) -> None:
        for path in run_dir.glob("*.ckpt"):
            assert verify(str(path)).valid, path

    landed = killing.random_kills(cmd, tmp_path, 20, seed=7, max_new_steps=6, progress=LOSS_LINE,
                                  check=committed_files_verify)
    killing.report(f"torchresume train ({mode} saves)", landed)
    assert landed["mid-save"] >= 5 and landed["mid-step"] >= 5, landed
    _finish(tmp_path, cmd)
    _assert_same(tmp_path, reference)


@pytest.mark.parametrize("mode", ["sync", "async", "paced"])
def test_sigterm_saves_exits_143_and_resumes_exactly(tmp_path, reference, mode) -> None:
    cmd = _cmd(tmp_path, save_steps=100, mode=mode)  # no periodic save before the signal
    rc = _run_until(tmp_path, cmd, 7, 0.0, signal.SIGTERM)
    assert rc == 128 + signal.SIGTERM
    saved = [p for p in tmp_path.glob("lenet-*.ckpt")]
    assert len(saved) == 1 and verify(str(saved[0])).valid
    step = inspection.describe(str(saved[0])).info["global_step"]
    assert 7 <= step < TOTAL
    out = _finish(tmp_path, cmd)
    assert f"global step {step})" in out
    _assert_same(tmp_path, reference)


def test_finished_run_says_so(tmp_path, reference) -> None:
    cmd = _cmd(tmp_path)
    _finish(tmp_path, cmd)
    assert "training already finished" in _finish(tmp_path, cmd)


def test_async_save_killed_mid_run_resumes_exactly(tmp_path, reference) -> None:
    cmd = [*_cmd(tmp_path, save_steps=2), "--async-save"]
    _run_until(tmp_path, cmd, 23, 0.0, signal.SIGKILL)
    out = _finish(tmp_path, cmd)
    assert "resumed from" in out
    _assert_same(tmp_path, reference)
