"""Real processes, real SIGKILL: Model.fit on a user's own DataLoader resumes bitwise exactly.

Each run trains 3 epochs of 12 steps with dropout, random noise drawn in the dataset's
__getitem__ (in the workers when there are any) and a checkpoint every 2 steps; it is
killed at random steps, only after it has made progress since its restart, and rerun.
Its final state (weights, optimizer state, RNG) must equal an uninterrupted run's.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import torchresume as tr

SCRIPT = str(Path(__file__).with_name("dataloader_run.py"))
TOTAL = 36


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def _cmd(run: Path, kind: str, workers: int, shuffle: bool, mode: str = "sync") -> list[str]:
    return [sys.executable, SCRIPT, str(run), kind, str(workers), "1" if shuffle else "0",
            *(["3", "async"] if mode == "async" else [])]


def _progress(run: Path) -> int:
    path = run / "progress"
    return len(path.read_text().split()) if path.exists() else 0


def _final(run: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in tr.load_checkpoint(str(run / "final.ckpt")).items()
            if isinstance(v, torch.Tensor)}


def _kill_after(run: Path, cmd: list[str], step: int) -> int:
    """Start the run; SIGKILL it once it has done a new step and reached ``step``."""
    before = _progress(run)
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        if _progress(run) >= max(before + 1, step):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    return proc.wait()


def _finish(run: Path, cmd: list[str]) -> str:
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout + proc.stderr


_references: dict[tuple[str, int, bool], dict[str, torch.Tensor]] = {}


def _reference(tmp_path_factory, kind: str, workers: int, shuffle: bool) -> dict[str, torch.Tensor]:
    key = (kind, workers, shuffle)
    if key not in _references:
        run = tmp_path_factory.mktemp(f"ref-{kind}-{workers}-{int(shuffle)}")
        out = _finish(run, _cmd(run, kind, workers, shuffle))
        assert f"summary {TOTAL} 3 True" in out
        _references[key] = _final(run)
    return _references[key]


def _assert_bitwise(run: Path, ref: dict[str, torch.Tensor]) -> None:
    final = _final(run)
    assert set(final) == set(ref)
    assert any(k.startswith("optimizer.") for k in final) and "rng" in final
    differ = [k for k, t in ref.items() if not torch.equal(final[k], t)]
    assert differ == []


@pytest.mark.parametrize(("shuffle", "workers", "kill_at"), [
    (True, 0, 7), (False, 0, 7), (True, 2, 15), (False, 2, 15), (True, 0, 12), (True, 2, 24)])
def test_plain_dataloader_killed_once(tmp_path, tmp_path_factory, shuffle, workers, kill_at) -> None:
    cmd = _cmd(tmp_path, "plain", workers, shuffle)
    _kill_after(tmp_path, cmd, kill_at)
    out = _finish(tmp_path, cmd)
    assert "resumed from" in out and "re-reads" not in out
    _assert_bitwise(tmp_path, _reference(tmp_path_factory, "plain", workers, shuffle))


@pytest.mark.parametrize(("kind", "mode"), [("plain", "sync"), ("stateful", "sync"), ("plain", "async")])
def test_random_sigkills_end_bitwise_equal(tmp_path, tmp_path_factory, kind, mode) -> None:
    cmd = _cmd(tmp_path, kind, 2, True, mode)
    rng = random.Random(11 if kind == "plain" else 12)
    kills = 0
    while kills < 5:
        rc = _kill_after(tmp_path, cmd, rng.randint(1, TOTAL - 4))
        if rc == 0:
            break
        assert rc == -signal.SIGKILL
        kills += 1
    assert kills >= 3
    out = _finish(tmp_path, cmd)
    assert "resumed from" in out or "already finished" in out
    _assert_bitwise(tmp_path, _reference(tmp_path_factory, kind, 2, True))


def test_stateful_dataloader_without_workers(tmp_path, tmp_path_factory) -> None:
    cmd = _cmd(tmp_path, "stateful", 0, True)
    _kill_after(tmp_path, cmd, 17)
    assert "resumed from" in _finish(tmp_path, cmd)
    _assert_bitwise(tmp_path, _reference(tmp_path_factory, "stateful", 0, True))
