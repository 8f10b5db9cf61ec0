"""Real SIGKILLs of workloads that draw from torch, python and numpy on every step.

Each workload (Model.fit, and a CheckpointManager custom loop) runs once
uninterrupted, then again under aimed SIGKILLs, some while a checkpoint write
is in flight and some between saves (tests/fault/killing.py says how a kill is
classified). The final checkpoints must be bitwise equal, every tensor
included: weights, optimizer state and the ``rng.*`` entries. A resume that
skips restoring any one generator draws different dropout masks, loss scales
or data and ends elsewhere.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import torchresume as tr
from tests.fault import killing, rng_workload
from torchresume.inspection import verify

WORKLOAD = str(Path(rng_workload.__file__))
FINAL = f"-{rng_workload.EPOCHS}_{rng_workload.STEPS}.ckpt"
KILLS = 6  # alternately aimed mid-save and mid-step
MIN_EACH = 2


def _cmd(kind: str, run_dir: Path, mode: str = "sync") -> list[str]:
    return [sys.executable, WORKLOAD, kind, str(run_dir), mode]


def _final(run_dir: Path) -> dict[str, torch.Tensor]:
    finals = [p for p in run_dir.glob(f"*{FINAL}") if "-best-" not in p.name]
    assert len(finals) == 1, sorted(p.name for p in run_dir.iterdir())
    d = tr.load_checkpoint(str(finals[0]))
    return {k: v for k, v in d.items() if isinstance(v, torch.Tensor)}


def _committed_files_verify(run_dir: Path) -> None:
    for path in run_dir.glob("*.ckpt"):
        assert verify(str(path)).valid, path


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Callable[[str], dict[str, torch.Tensor]]:
    """The final state of one uninterrupted (sync) run per workload, made once and shared by its tests."""
    finals: dict[str, dict[str, torch.Tensor]] = {}

    def final_of(kind: str) -> dict[str, torch.Tensor]:
        if kind not in finals:
            ref_dir = tmp_path_factory.mktemp(f"reference-{kind}")
            subprocess.run(_cmd(kind, ref_dir), check=True, env=killing.env(), capture_output=True, timeout=600)
            finals[kind] = _final(ref_dir)
        return finals[kind]
    return final_of


@pytest.mark.parametrize("mode", ["sync", "async", "overlap"])
@pytest.mark.parametrize("kind", ["fit", "loop"])
def test_sigkills_resume_every_rng_bitwise(tmp_path, uninterrupted, kind, mode) -> None:
    expected = uninterrupted(kind)
    assert any(k.startswith("rng.") for k in expected) and "ballast" in expected

    run_dir = tmp_path / "killed"
    aims = ("mid-save", "mid-step", "mid-copy") if mode == "overlap" else ("mid-save", "mid-step")
    landed = killing.random_kills(_cmd(kind, run_dir, mode), run_dir, KILLS * len(aims) // 2,
                                  seed=sum(map(ord, kind)), check=_committed_files_verify, aims=aims,
                                  max_new_steps=20 if len(aims) == 2 else 10)  # 9 kills fit in the run
    killing.report(f"{kind} workload ({mode} saves)", landed)
    assert all(landed[aim] >= MIN_EACH for aim in aims), landed
    done = subprocess.run(_cmd(kind, run_dir, mode), env=killing.env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr

    final = _final(run_dir)
    assert set(final) == set(expected)
    differ = [name for name, t in expected.items() if not torch.equal(final[name], t)]
    assert differ == [], f"differs from the uninterrupted run: {differ}"
