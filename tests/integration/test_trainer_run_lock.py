"""The run lock and the start's clean-up of Lightning (DDP) and the Hugging Face Trainer (torchrun), as
users meet them: real trainers in real processes (the manager's invariants, issue 31 item 2).

One job per trainer: a 2-rank job (A) starts on a directory holding what killed writers left (a
temporary file, a sharded save's parts without a manifest) and removes both once rank 0 holds the
lock; stopped mid-run, it still holds the directory, so a second job (2 ranks; for the HF Trainer
one process too) is refused before it reads or deletes anything, every rank with the same RunLockedError naming
A's rank 0; A then trains on to the end. A's clean-up came at its start only: what was left while
it ran stays.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.distributed.launch import torchrun_cmd
from tests.fault.killing import Child, env, family
from torchresume.run_lock import LOCK_NAME

HERE = Path(__file__).parent


class Trainer(NamedTuple):
    script: list[str]  # the run's arguments after RUN_DIR
    prefix: str  # its checkpoints' prefix
    finished: str  # what rank 0 prints at the end
    one_process: bool  # a one-process second job tried here too (Lightning's: test_lightning_round_three)


LIGHTNING = Trainer([str(HERE / "lightning_run.py"), "{run}", "0", "2"], "lit", "finished 10", False)
TRANSFORMERS = Trainer([str(HERE / "transformers_run.py"), "{run}"], "trainer", "summary 12", True)


def _args(trainer: Trainer, run: Path, ddp: bool) -> list[str]:
    args = [a.format(run=run) for a in trainer.script]
    return [*args, "ddp"] if ddp and trainer is LIGHTNING else args


def _leave_leftovers(run: Path, prefix: str, step: int) -> list[str]:
    """What a writer killed at ``step`` leaves: its temporary file (its pid gone) and a sharded
    save's parts without the manifest that commits them."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    temp = f".{prefix}-9_{step}.ckpt.tmp-{dead.pid}-0a1b2c"
    (run / temp).write_bytes(b"half a checkpoint")
    parts = run / f"{prefix}-9_{step + 1}.ckpt"
    parts.mkdir()
    (parts / "__0_0.distcp").write_bytes(b"one rank's part")
    return [temp, parts.name]


@pytest.mark.parametrize("trainer", [LIGHTNING, TRANSFORMERS], ids=["lightning-ddp", "transformers-torchrun"])
def test_a_job_holds_its_directory_and_cleans_it_at_start(trainer: Trainer, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    before_a = _leave_leftovers(run, trainer.prefix, 1)
    first = Child(torchrun_cmd(2, _args(trainer, run, ddp=True)), group=True)
    try:
        assert first.wait_new_steps(3), first.stderr[-3000:]
        first.signal(signal.SIGSTOP)  # alive, holding the lock, writing nothing while the others start
        assert not set(before_a) & set(os.listdir(run))  # removed at A's start
        holder = json.loads((run / LOCK_NAME).read_text())["pid"]
        assert holder in family(first.proc.pid) and holder != first.proc.pid  # a rank, not the launcher
        during_a = _leave_leftovers(run, trainer.prefix, 3)
        before = sorted(os.listdir(run))
        refused = (f"torchresume.errors.RunLockedError: {os.path.realpath(run)} is in use by another training "
                   f"run (pid {holder} on {socket.gethostname()}, since")
        seconds = [([sys.executable, *_args(trainer, run, ddp=False)], 1)] if trainer.one_process else []
        for cmd, ranks in [*seconds, (torchrun_cmd(2, _args(trainer, run, ddp=True)), 2)]:
            second = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
            assert second.returncode != 0, second.stdout[-3000:]
            assert second.stderr.count(refused) == ranks, second.stderr[-3000:]
            assert "resuming from" not in second.stderr and "training from the start" not in second.stderr
            assert "step " not in second.stdout
            assert sorted(os.listdir(run)) == before  # nothing read, written or deleted
        first.signal(signal.SIGCONT)
        assert first.finish() == 0, first.stderr[-3000:]
    finally:
        if first.proc.poll() is None:  # a failed check: no rank outlives the test
            first.signal(signal.SIGKILL)
            first.finish()
    assert trainer.finished in "\n".join(first.lines)
    assert first.stderr.count(f"removing {run / before_a[1]}: an interrupted save's parts") == 1  # rank 0 alone
    assert set(during_a) <= set(os.listdir(run))  # A cleaned at its start only
    assert LOCK_NAME not in os.listdir(run)  # released at the end
