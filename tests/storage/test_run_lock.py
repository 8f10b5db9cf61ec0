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
