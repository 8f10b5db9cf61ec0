"""What `torchrun ... -m torchresume train` prints when things go wrong: one line each, once per job
(issue 20, item 2): a lost peer rank, a batch that does not split, and "resumed from"."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.distributed.launch import Launcher, committed, run, torchrun_cmd, train_cli


def _rank_pid(launcher: Launcher, rank: int) -> int | None:
    for pid in launcher.workers():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return pid
    return None


def test_a_lost_peer_rank_is_one_line_naming_it_and_the_rerun(tmp_path: Path) -> None:
    cmd = torchrun_cmd(2, train_cli(tmp_path / "ckpt", "--epochs", "1", "--steps-per-epoch", "100000",
                                    "--save-steps", "5"))
    launcher = Launcher(cmd, tmp_path)
    while not committed(tmp_path / "ckpt", "mlp") and launcher.proc.poll() is None:
        time.sleep(0.1)
    pid = _rank_pid(launcher, 1)
    assert pid is not None, launcher.output()[-3000:]
    os.kill(pid, signal.SIGKILL)
    assert launcher.finish() != 0
    out = launcher.output()
    # torchrun's launcher prints its own report (ChildFailedError); no rank prints a traceback
    assert "[rank0]: Traceback" not in out and "/torchresume/" not in out, out[-4000:]
    assert "Traceback (most recent call last)" not in out.split("elastic/multiprocessing/api.py")[0], out[-4000:]
    assert ("torchresume: error: rank 0: lost rank 1 (its process ended); this job cannot go on. Rerun the "
            "same command: it resumes from the newest committed checkpoint (the failed collective said: ") in out, \
        out[-4000:]


def test_a_batch_that_does_not_split_is_said_once_and_resume_is_said_once(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    bad = run(torchrun_cmd(2, train_cli(ckpt, "--epochs", "1", "--steps-per-epoch", "4", "--batch-size", "15")),
              tmp_path)
    assert bad.returncode != 0
    said = (bad.stdout + bad.stderr).count("the global batch size 15 does not split evenly")
    assert said == 1, bad.stderr[-3000:]
    assert "/torchresume/" not in bad.stderr, bad.stderr[-3000:]  # torchrun's own report aside, no traceback
    first = run(torchrun_cmd(2, train_cli(ckpt, "--epochs", "1", "--steps-per-epoch", "4")), tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    again = run(torchrun_cmd(2, train_cli(ckpt, "--epochs", "2", "--steps-per-epoch", "4")), tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("resumed from") == 1, again.stdout


def test_only_a_collective_failure_is_a_lost_peer() -> None:
    """An object-storage connection error under torchrun is not reported as a lost rank."""
    from torchresume.errors import StorageError
    from torchresume.train.distributed import lost_peer_message
    assert lost_peer_message(StorageError("upload failed: Connection reset by peer")) is None
    gloo = RuntimeError("[third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:4: "
                        "Connection reset by peer")
    assert lost_peer_message(gloo) == ("rank 0: lost a peer rank (the connection to it closed); this job cannot "
                                       "go on. Rerun the same command: it resumes from the newest committed "
                                       "checkpoint (the failed collective said: [third_party/gloo/gloo/transport/"
                                       "tcp/pair.cc:537] Read error [127.0.0.1]:4: Connection reset by peer)")


def test_a_rank_ends_its_process_itself_and_loses_no_output(tmp_path: Path) -> None:
    """Under torchrun the command ends the rank's process with os._exit (train.distributed.end_process:
    gloo aborted about one teardown in 20): its output is flushed first and its exit code kept."""
    import subprocess
    import sys
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "1"}
    cli = [sys.executable, "-m", "torchresume"]
    version = subprocess.run([*cli, "--version"], capture_output=True, text=True, env=env, timeout=120)
    assert (version.returncode, version.stdout.startswith("torchresume ")) == (0, True), version
    missing = subprocess.run([*cli, "verify", str(tmp_path / "none.ckpt")], capture_output=True, text=True,
                             env=env, timeout=120)
    assert missing.returncode == 1 and "none.ckpt" in missing.stdout + missing.stderr, missing


def test_an_error_rank_0_meets_alone_stops_every_rank_with_it(tmp_path: Path) -> None:
    """Resume discovery runs on rank 0 (then broadcast): when it fails there (runs mlp_1 and mlp_2 but no
    'mlp': ambiguous), every rank raises the same error at once; none waits for rank 0 and then reports
    it lost (the collective timeout is 600 s)."""
    import subprocess
    import sys
    train_dir = tmp_path / "ckpt"
    cli = [sys.executable, *train_cli(train_dir, "--epochs", "1", "--steps-per-epoch", "2", "--save-steps", "2")]
    for _ in range(3):  # mlp, then mlp_1 and mlp_2 (fresh runs into a directory that has one)
        subprocess.run([*cli, "--resume", "none"], check=True, capture_output=True, timeout=300)
    for path in train_dir.glob("mlp-*.ckpt"):
        path.unlink()
    start = time.monotonic()
    done = run(torchrun_cmd(2, train_cli(train_dir, "--epochs", "2", "--steps-per-epoch", "2", "--save-steps", "2")),
               tmp_path)
    took = time.monotonic() - start
    out = done.stdout + done.stderr
    assert done.returncode != 0 and "has no checkpoints of run 'mlp' but has runs mlp_1" in out, out[-3000:]
    assert out.count("torchresume: error:") == 1 and "lost rank" not in out, out[-3000:]
    assert took < 120, took  # unloaded ~6 s: no rank waits out a collective timeout
