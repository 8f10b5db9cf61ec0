"""The manager's promises, the same for a custom loop in one process and in a 2-rank torchrun job.

One real job per world checks several promises in a row (tests/integration/manager_loop.py, a
loop on ``CheckpointManager``, the same file in both worlds):

1. it saves at steps 10 and 20 and ends;
2. the newest checkpoint is damaged, a killed writer's temporary file lies beside it and (sharded)
   a killed save's parts without a manifest: the rerun takes the run lock, removes both, passes
   over the damaged newest on every rank alike and resumes from step 10, then trains to 30;
3. a rerun of the finished run trains nothing and says so on every rank;
4. while another process holds the directory's run lock, the job is refused on every rank with
   the same RunLockedError and reads or removes nothing (the temporary file planted then stays).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import torchresume as tr
from tests.distributed.launch import Launcher, env, torchrun_cmd

LOOP = str(Path(__file__).with_name("manager_loop.py"))
WORLDS = {"one process": 1, "torchrun": 2}


def _run(world: int, directory: Path, steps: int) -> tuple[int, str]:
    args = [LOOP, str(directory), str(steps), "10"]
    if world == 1:
        done = subprocess.run([sys.executable, *args], env=env(), capture_output=True, text=True, timeout=300)
        return done.returncode, done.stdout + done.stderr
    job = Launcher(torchrun_cmd(world, args), directory.parent)
    return job.finish(), job.output()


def _dead_pid() -> int:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


def _damage(path: Path) -> None:
    """Flip bytes inside tensor data: the checkpoint still lists, its checksums fail."""
    target = max(path.glob("rank-*.safetensors")) if path.is_dir() else path
    data = bytearray(target.read_bytes())
    for i in range(len(data) - 64, len(data) - 32):
        data[i] ^= 0xFF
    target.write_bytes(bytes(data))


def _said(out: str, line: str, world: int) -> bool:
    return all(f"rank {r}: {line}" in out for r in range(world))


@pytest.mark.parametrize("world", list(WORLDS.values()), ids=list(WORLDS))
def test_lock_cleanup_damaged_newest_and_a_finished_run(tmp_path: Path, world: int) -> None:
    run = tmp_path / "run"
    code, out = _run(world, run, 20)
    assert code == 0, out[-3000:]
    assert _said(out, "fresh start", world) and _said(out, "trained to step 20", world), out[-3000:]

    _damage(run / "lin-1_20.ckpt")
    temp = run / f".lin-1_30.ckpt.tmp-{_dead_pid()}-0123abcd"
    temp.write_bytes(b"half a checkpoint")
    unfinished = run / "lin-1_25.ckpt"
    if world > 1:
        unfinished.mkdir()
        (unfinished / "rank-00000.safetensors").write_bytes(b"parts of a killed save")
    code, out = _run(world, run, 30)
    assert code == 0, out[-3000:]
    assert _said(out, "resumed from lin-1_10.ckpt", world), out[-3000:]  # every rank passed over the same one
    assert any(line.startswith("torchresume: skipping invalid checkpoint ") and "lin-1_20.ckpt" in line
               for line in out.splitlines()), out[-3000:]
    assert not temp.exists() and not unfinished.exists()
    assert _said(out, "trained to step 30", world)
    names = sorted(p.name for p in run.iterdir() if p.name.startswith("lin-"))
    assert names == ["lin-1_10.ckpt", "lin-1_20.ckpt", "lin-1_30.ckpt"]

    code, out = _run(world, run, 30)
    assert code == 0 and _said(out, "resumed from lin-1_30.ckpt", world), out[-3000:]
    assert _said(out, "already finished at step 30", world), out[-3000:]
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("lin-")) == names

    holder = tr.CheckpointManager(str(run), model=torch.nn.Linear(1, 1), layout="file")
    holder.acquire_lock()
    temp.write_bytes(b"the holder's business")  # looks like a killed writer's: only a lock holder may judge
    try:
        code, out = _run(world, run, 40)
    finally:
        holder.close()
    assert code != 0
    assert out.count(f"RunLockedError: {run} is in use by another training run (pid {os.getpid()} ") == world, \
        out[-3000:]
    assert temp.exists() and "resumed" not in out  # nothing read or removed without the lock
