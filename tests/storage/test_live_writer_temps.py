"""Stale temporaries are cleaned up, but never a live writer's.

A real writer process is frozen (SIGSTOP) while its temporary checkpoint file
exists; a CheckpointManager opened on the same directory (which cleans up
stale temporaries) must leave that file alone, and the writer must then
commit its checkpoint. A killed writer's temporary is removed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import torch

import torchresume as tr
from tests.fault.killing import temporaries
from torchresume.inspection import verify

WRITER = """
import sys, torch, torchresume as tr
state = {f"t{i}": torch.full((1 << 20,), float(i)) for i in range(8)}  # 32 MiB
for n in range(1, 4):
    tr.save_checkpoint(state, sys.argv[1], append_dict={"n": n})
"""
LIMIT_S = 300  # a safety net for a hung writer, not a measured duration


def _frozen_mid_write(tmp_path) -> tuple[subprocess.Popen, str]:
    """A writer stopped while its temporary exists, and the temporary's name."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    directory = tmp_path / "ckpts"
    directory.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, str(script), str(directory / "state.ckpt")], env=env)
    deadline = time.monotonic() + LIMIT_S
    while proc.poll() is None and time.monotonic() < deadline:
        if temporaries(directory, proc.pid):
            os.kill(proc.pid, signal.SIGSTOP)
            temps = temporaries(directory, proc.pid)
            if temps:
                return proc, temps[0]
            os.kill(proc.pid, signal.SIGCONT)  # it committed between the look and the stop
        time.sleep(0.0005)
    proc.kill()
    raise AssertionError("never saw the writer's temporary")


def test_live_writers_temporary_survives_a_new_manager(tmp_path) -> None:
    proc, temp = _frozen_mid_write(tmp_path)
    directory = tmp_path / "ckpts"
    try:
        tr.CheckpointManager(str(directory), prefix="other")  # cleans up stale temporaries on open
        assert temp in os.listdir(directory), "a live writer's temporary was deleted"
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert proc.wait(timeout=LIMIT_S) == 0  # and the writer committed its checkpoints
    assert verify(str(directory / "state.ckpt")).valid
    assert tr.load_checkpoint(str(directory / "state.ckpt"))["n"] == 3
    assert temporaries(directory, proc.pid) == []


def test_dead_writers_temporary_is_removed(tmp_path) -> None:
    proc, temp = _frozen_mid_write(tmp_path)
    directory = tmp_path / "ckpts"
    proc.kill()
    proc.wait(timeout=LIMIT_S)
    assert temp in os.listdir(directory)
    net = torch.nn.Linear(2, 2)
    mgr = tr.CheckpointManager(str(directory), model=net, prefix="run")
    assert temp in os.listdir(directory)  # nothing is removed before the manager holds the run lock
    mgr.acquire_lock()
    assert temp not in os.listdir(directory)
    mgr.save(1, 1)
    mgr.close()  # releases the run lock, whose file is the only other dot-file
    assert sorted(n for n in os.listdir(directory) if n.startswith(".")) == []
