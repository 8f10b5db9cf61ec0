"""Random SIGKILLs of a 2-rank torchrun job (one rank, or the launcher); the end is bitwise equal.

Real torchrun launchers, gloo on CPU, ``--deterministic``. A baseline runs
uninterrupted. The interrupted run loses one rank to SIGKILL (the launcher
then stops the other; the same command restarts it), then the launcher itself
(its ranks die with it: no orphan trains on), then, under ``--max-restarts 1``,
one rank again, which torchrun restarts by itself. Every tensor of the final
checkpoint (weights, optimizer state, each rank's RNG and data position) is
bitwise equal to the baseline's. Once with synchronous saves, once with ``--async-save --overlap``
(each rank's copy of its parameters and optimizer state runs beside its next step) and a save
deadline (``--save-deadline 120``: one every healthy save meets changes nothing, under kills too).
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest

from tests.distributed.launch import Launcher, committed, every_tensor, torchrun_cmd, train_cli

STEPS = 40
ARGS = ("--epochs", "1", "--steps-per-epoch", str(STEPS), "--save-steps", "4", "--print-every", "1")


MODES = {"sync": (), "overlap": ("--async-save", "--overlap", "--save-deadline", "120")}


def _cmd(directory: Path, restarts: int = 0, mode: str = "sync") -> list[str]:
    extra = ["--standalone", "--max-restarts", str(restarts)] if restarts else None
    return torchrun_cmd(2, train_cli(directory, *ARGS, *MODES[mode]), extra=extra)


def _progress(launcher: Launcher, steps: int) -> bool:
    """Until this launcher's job trained ``steps`` more steps; False if it ended first."""
    return launcher.wait_for("epoch: 1 step: ", count=steps)


def _gone(pids: list[int], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if Path(f"/proc/{p}").exists()
                 and "zombie" not in Path(f"/proc/{p}/status").read_text().lower()]
        if not alive:
            return True
        time.sleep(0.2)
    return False


def _kill_rank(launcher: Launcher, rng: random.Random) -> None:
    workers = launcher.workers()
    assert len(workers) == 2, launcher.output()[-2000:]
    os.kill(rng.choice(workers), signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
def test_random_kills_end_bitwise_equal_to_an_uninterrupted_run(tmp_path: Path, mode: str) -> None:
    rng = random.Random(int(os.environ.get("KILL_SEED", "10")))
    base = Launcher(_cmd(tmp_path / "base"), tmp_path)  # the reference: synchronous saves
    assert base.finish() == 0, base.output()[-3000:]
    expected = every_tensor(committed(tmp_path / "base", "mlp")[-1])

    work = tmp_path / "killed"
    first = Launcher(_cmd(work, mode=mode), tmp_path)  # 1: SIGKILL one rank; the same command restarts
    if _progress(first, rng.randint(2, 12)):
        _kill_rank(first, rng)
    assert first.finish() != 0

    second = Launcher(_cmd(work, mode=mode), tmp_path)  # 2: SIGKILL the launcher; its ranks die with it
    if _progress(second, rng.randint(2, 12)):
        workers = second.workers()
        os.kill(second.proc.pid, signal.SIGKILL)
        assert _gone(workers), "ranks outlived their launcher"
    second.finish()

    third = Launcher(_cmd(work, restarts=1, mode=mode), tmp_path)  # 3: torchrun restarts the ranks itself
    if _progress(third, rng.randint(2, 12)):
        _kill_rank(third, rng)
    assert third.finish() == 0, third.output()[-3000:]
    assert committed(work, "mlp")[-1].name == f"mlp-1_{STEPS}.ckpt"
    got = every_tensor(committed(work, "mlp")[-1])
    assert sorted(got) == sorted(expected)
    unequal = [name for name in expected if not got[name].equal(expected[name])]
    assert not unequal, f"differs from the uninterrupted run: {unequal}"
