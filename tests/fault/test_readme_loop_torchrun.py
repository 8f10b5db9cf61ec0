"""The README's own loop (``train.py``) under real torchrun: killed five times, it ends bitwise equal.

The file is taken from README.md as it stands: the same ``CheckpointManager`` in one process and
in a 2-rank gloo job. A baseline runs uninterrupted; the other job is SIGKILLed whole (every rank
and the launcher, a power cut) five times: three times just after one of its saves committed
(during the next steps or the next save), twice at a random moment of start-up or restore. The
rerun then finishes, and every tensor of the newest checkpoint (weights, optimizer, each rank's
RNG streams) equals the baseline's. That checkpoint restores in one process (world size 1), and a
rerun of the finished job trains nothing and says so. Another process holding the directory's
run lock makes every rank refuse to start with the same RunLockedError.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch

import torchresume as tr
from tests.distributed.launch import Launcher, committed, every_tensor, torchrun_cmd
from tests.docs_blocks import blocks_of

ROOT = Path(__file__).resolve().parents[2]
KILLS = 5


def _job(cwd: Path) -> Launcher:
    if not (cwd / "train.py").exists():
        cwd.mkdir(parents=True, exist_ok=True)
        block = next(b for b in blocks_of(ROOT / "README.md") if b.title == "train.py")
        (cwd / "train.py").write_text(block.code)
    return Launcher(torchrun_cmd(2, ["train.py"]), cwd)


def _steps(cwd: Path) -> list[int]:
    return [int(p.name.rsplit("_", 1)[1].split(".")[0]) for p in committed(cwd / "runs" / "linear", "linear")]


def _kill_whole_job(job: Launcher) -> bool:
    """SIGKILL every rank and the launcher at once; whether the job was still running."""
    running = job.proc.poll() is None
    for pid in [*job.workers(), job.proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    job.finish()
    return running


def _after_next_save(job: Launcher, cwd: Path, rng: random.Random) -> None:
    before = set(_steps(cwd)) if (cwd / "runs" / "linear").exists() else set()
    deadline = time.monotonic() + 120
    while job.proc.poll() is None and time.monotonic() < deadline:
        if (cwd / "runs" / "linear").exists() and set(_steps(cwd)) - before:
            break
        time.sleep(0.005)
    time.sleep(rng.uniform(0, 0.03))


@pytest.mark.slow
def test_killed_five_times_it_ends_bitwise_equal_and_restores_in_one_process(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("KILL_SEED", "31")))
    base = _job(tmp_path / "base")
    assert base.finish() == 0, base.output()[-3000:]
    expected = every_tensor(committed(tmp_path / "base" / "runs" / "linear", "linear")[-1])

    work = tmp_path / "killed"
    landed = 0
    for round_ in range(KILLS):
        job = _job(work)
        if round_ < 3:
            _after_next_save(job, work, rng)
        else:
            time.sleep(rng.uniform(0.5, 4.0))
        landed += _kill_whole_job(job)
    assert landed >= 3, f"only {landed} of {KILLS} kills found the job running"

    last = _job(work)
    assert last.finish() == 0, last.output()[-3000:]
    newest = committed(work / "runs" / "linear", "linear")[-1]
    assert newest.name == "linear-1_400.ckpt"
    got = every_tensor(newest)
    assert got.keys() == expected.keys()
    # train.py seeds torch only: numpy's generator starts from fresh entropy in every process (the
    # baseline's and the first killed one's differ), so its saved stream is compared for presence only.
    unequal = [k for k in expected if "rng.numpy" not in k and not torch.equal(got[k], expected[k])]
    assert not unequal, f"differ from the uninterrupted run: {unequal}"
    assert len(committed(work / "runs" / "linear", "linear")) == 3  # keep=3

    again = _job(work)
    assert again.finish() == 0, again.output()[-3000:]
    assert again.output().count("already finished: 400 steps done") == 2, again.output()[-3000:]

    net = torch.nn.Linear(10, 1)
    mgr = tr.CheckpointManager(str(work / "runs" / "linear"), model=net, optimizer=torch.optim.SGD(
        net.parameters(), lr=0.05), prefix="linear")
    info = mgr.restore_latest()
    mgr.close()
    assert info is not None and info["step"] == 400 and info["path"].endswith("linear-1_400.ckpt")
    weights = {k.split("/", 1)[1]: v for k, v in expected.items() if "/model." in k}
    assert torch.equal(net.weight, weights["model.weight"]) and torch.equal(net.bias, weights["model.bias"])


def test_a_job_on_a_directory_another_run_holds_is_refused_on_every_rank(tmp_path: Path) -> None:
    (tmp_path / "runs" / "linear").mkdir(parents=True)
    holder = tr.CheckpointManager(str(tmp_path / "runs" / "linear"), model=torch.nn.Linear(1, 1))
    holder.acquire_lock()
    try:
        job = _job(tmp_path)
        assert job.finish() != 0
    finally:
        holder.close()
    out = job.output()
    assert out.count("torchresume.errors.RunLockedError: ") == 2, out[-3000:]
    assert out.count("RunLockedError: runs/linear is in use by another training run (pid ") == 2, out[-3000:]
    assert not list((tmp_path / "runs" / "linear").glob("linear-*")), "a refused job wrote a checkpoint"
