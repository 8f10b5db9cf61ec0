"""The run lock: one writer per directory, named when refused, taken over from a dead holder."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

import torchresume as tr
from torchresume import run_lock

HOLDER = textwrap.dedent("""
    import sys, time
    from torchresume import run_lock
    run_lock.acquire(sys.argv[1])
    print("locked", flush=True)
    time.sleep(120)
""")


def hold(directory: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, directory], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_second_process_is_refused_with_the_holder_named(tmp_path) -> None:
    directory = str(tmp_path / "run")
    proc = hold(directory)
    try:
        with pytest.raises(tr.RunLockedError) as info:
            run_lock.acquire(directory)
        message = str(info.value)
        assert message.startswith(f"{directory} is in use by another training run (pid {proc.pid} on "
                                   f"{socket.gethostname()}, since ")
        assert message.endswith("); wait for it to finish, stop it, or train into another directory")
    finally:
        proc.kill()
        proc.wait()


def test_lock_of_a_killed_run_is_taken_over(tmp_path) -> None:
    directory = str(tmp_path / "run")
    proc = hold(directory)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    lock = run_lock.acquire(directory)  # the kernel dropped the dead holder's flock
    try:
        assert lock.directory == directory
    finally:
        run_lock.release(directory)


def test_reentrant_within_a_process(tmp_path) -> None:
    directory = str(tmp_path / "run")
    first = run_lock.acquire(directory)
    second = run_lock.acquire(directory)
    assert first is second
    run_lock.release(directory)
    proc = subprocess.run([sys.executable, "-c", HOLDER.replace("time.sleep(120)", ""), directory],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "RunLockedError" in proc.stderr  # still held once
    run_lock.release(directory)
    proc = subprocess.run([sys.executable, "-c", HOLDER.replace("time.sleep(120)", ""), directory],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_manager_saves_take_the_lock(tmp_path, trained) -> None:
    net, opt = trained
    directory = str(tmp_path / "run")
    mgr = tr.CheckpointManager(directory, model=net, optimizer=opt, prefix="net")
    mgr.save(1, 1)
    proc = subprocess.run([sys.executable, "-c", HOLDER.replace("time.sleep(120)", ""), directory],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and f"pid {os.getpid()}" in proc.stderr
    mgr.close()
    proc = subprocess.run([sys.executable, "-c", HOLDER.replace("time.sleep(120)", ""), directory],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_remote_lock_names_the_holder_and_expires(bucket, monkeypatch) -> None:
    directory = f"{bucket}/run"
    lock = run_lock.RunLock(directory, local_dir=None)
    lock.refresh({"host": "other-host", "pid": 1, "started": 0.0, "heartbeat": __import__("time").time()})
    with pytest.raises(tr.RunLockedError, match=r"in use by another training run \(pid 1 on other-host"):
        run_lock.RunLock(directory, local_dir=None).acquire()
    monkeypatch.setattr(run_lock, "STALE_S", -1.0)  # the other host's heartbeat is now too old
    taker = run_lock.RunLock(directory, local_dir=None)
    taker.acquire()
    taker.release()


def test_a_torchrun_run_renews_its_remote_lock_at_each_save(bucket, tmp_path, monkeypatch) -> None:
    """The sharded layout (torchrun): rank 0 renews the heartbeat at each save, so a second launch
    cannot take the lock of a long run (and then remove its save in flight as an interrupted one)."""
    import time

    import torch
    import torch.distributed as dist

    from torchresume.manager import CheckpointManager
    from torchresume.world import World

    directory = f"{bucket}/run"
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        manager = CheckpointManager(directory, model=torch.nn.Linear(2, 1), layout="sharded")
        manager.acquire_lock()
        lock = manager._lock
        assert lock is not None
        before = lock._read_remote()
        assert before is not None
        time.sleep(0.05)
        manager.save(epoch=1, step=1)
        after = lock._read_remote()
        assert after is not None and after["heartbeat"] > before["heartbeat"] and after["pid"] == before["pid"]
        monkeypatch.setattr(lock, "refresh", lambda: (_ for _ in ()).throw(OSError("gone")))
        manager.world = World(rank=0, size=2)  # as rank 0 of two: the other rank is on its way into the save
        manager.hold_lock()  # a failed renewal is said, not raised
        manager.close()
        assert lock._read_remote() is None  # released
    finally:
        dist.destroy_process_group()


def test_a_busy_directory_is_refused_before_anything_is_read(tmp_path, capsys) -> None:
    """Issue 34: a second trainer on a busy directory says "is in use" and has resumed nothing (the
    lock comes before any read, upload or delete); a rerun of a finished run lets the lock go."""
    from torchresume.cli.main import main
    directory = str(tmp_path / "run")
    args = ["train", "--model", "mlp", "--epochs", "1", "--steps-per-epoch", "4", "--save-steps", "2",
            "--threads", "1", "--train-url", directory]
    assert main(args) == 0
    capsys.readouterr()
    # A damaged "newest": any read of the run before the lock would be seen, as the warning that
    # passes over it (the last run below shows that warning is what such a read prints).
    damaged = os.path.join(directory, "mlp-1_99.ckpt")
    with open(damaged, "wb") as f:
        f.write(b"not a checkpoint, newest by its name")
    proc = hold(directory)
    try:
        code = main([*args, "--epochs", "2"])
    finally:
        proc.kill()
        proc.wait()
    out, err = capsys.readouterr()
    assert code == run_lock.EXIT_CODE, err
    assert "is in use by another training run" in err
    assert "resumed from" not in out + err
    assert "mlp-1_99.ckpt" not in out + err  # nothing of the run was read before the lock
    assert main(args) == 0  # already finished: resumed, nothing trained
    out, err = capsys.readouterr()
    assert "training already finished" in out
    assert f"skipping invalid checkpoint {damaged}" in err  # a read of the run: observable
    assert os.path.realpath(directory) not in run_lock._held  # and let go (other tests' locks may be held)
