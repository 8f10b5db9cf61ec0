"""async_writer.py: jobs run in order; a failure is kept and re-raised, never lost."""

from __future__ import annotations

import logging
import os
import threading
import time

import pytest
import torch

import torchresume as tr
from torchresume import manager as manager_module
from torchresume.async_writer import AsyncWriter
from torchresume.errors import AsyncSaveError, CheckpointConfigError
from torchresume.manager import CheckpointManager


@pytest.fixture
def writer():
    w = AsyncWriter()
    yield w
    try:
        w.close()
    except AsyncSaveError:
        pass


def _boom() -> None:
    raise OSError(28, "No space left on device")


def test_jobs_run_in_submission_order(writer) -> None:
    seen: list[int] = []
    for i in range(20):
        writer.submit(lambda i=i: seen.append(i), f"job {i}")
    writer.wait()
    assert seen == list(range(20))


def test_jobs_run_on_a_background_thread(writer) -> None:
    names: list[str] = []
    writer.submit(lambda: names.append(threading.current_thread().name), "x")
    writer.wait()
    assert names[0].startswith("torchresume-writer")
    assert names[0] != threading.current_thread().name


def test_wait_reraises_a_failure_once(writer) -> None:
    gate = threading.Event()
    writer.submit(lambda: (gate.wait(5), _boom()), "ckpt-1_1.ckpt")
    gate.set()
    with pytest.raises(AsyncSaveError) as err:
        writer.wait()  # the first raise drains it...
    assert str(err.value) == ("background save of ckpt-1_1.ckpt failed: [Errno 28] No space left "
                              "on device")
    writer.submit(lambda: None, "next")  # ...so the next submit is clean
    writer.wait()


def test_submit_raises_an_earlier_failure_with_its_cause(writer) -> None:
    done = threading.Event()

    def fail() -> None:
        try:
            _boom()
        finally:
            done.set()
    writer.submit(fail, "a.ckpt")
    assert done.wait(5)
    while not all(f.done() for f in writer._pending):  # the future settles just after the job
        threading.Event().wait(0.001)
    ran: list[int] = []
    with pytest.raises(AsyncSaveError, match=r"^background save of a\.ckpt failed") as err:
        writer.submit(lambda: ran.append(1), "b.ckpt")
    assert isinstance(err.value.__cause__, OSError)
    assert err.value.__cause__.errno == 28
    writer.wait()
    assert ran == []  # the job after the failure was not queued


def test_close_reraises_a_failure() -> None:
    w = AsyncWriter()
    w.submit(_boom, "last.ckpt")
    with pytest.raises(AsyncSaveError) as err:
        w.close()
    assert isinstance(err.value.__cause__, OSError)
    assert "background save of last.ckpt failed" in str(err.value)


def test_only_the_failing_job_fails(writer) -> None:
    seen: list[str] = []
    writer.submit(lambda: seen.append("a"), "a")
    writer.submit(_boom, "b")
    writer.submit(lambda: seen.append("c"), "c")
    with pytest.raises(AsyncSaveError, match="background save of b failed"):
        writer.wait()
    assert seen == ["a", "c"]
    writer.wait()  # reported once, then forgotten


def test_wait_timeout_raises_and_work_stays_queued(writer) -> None:
    gate = threading.Event()
    seen: list[int] = []
    writer.submit(lambda: (gate.wait(10), seen.append(1)), "slow")
    with pytest.raises(TimeoutError):
        writer.wait(timeout=0)
    assert len(writer._pending) == 1
    assert seen == []
    gate.set()
    writer.wait()
    assert seen == [1]
    assert writer._pending == []


def test_a_job_result_is_not_an_error(writer) -> None:
    writer.submit(lambda: 42, "x")
    writer.wait()
    writer.raise_if_failed()


# -- CheckpointManager(async_save=True): staging, one save in flight, the busy policy ------------

@pytest.fixture
def tr_log(caplog):
    """Records of the torchresume logger (it does not propagate to the root logger)."""
    logger = logging.getLogger("torchresume")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.DEBUG, logger="torchresume")
    yield caplog
    logger.removeHandler(caplog.handler)


class HeldWrites:
    """Holds every checkpoint write until released: a slow disk, made deterministic."""

    def __init__(self, monkeypatch) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        real = manager_module.write_encoded

        def held(*args, **kwargs):
            self.started.set()
            self.gate.wait(30)
            return real(*args, **kwargs)
        monkeypatch.setattr(manager_module, "write_encoded", held)


def _messages(caplog, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


def test_async_manager_reuses_its_staging_buffers(tmp_path, net) -> None:
    m = CheckpointManager(str(tmp_path), model=net, async_save=True)
    try:
        for step in range(1, 4):
            m.save(1, step)
        m.wait()
        assert m.slot._stager is not None and m.slot._stager.allocations == 1
        assert [e.name for e in m.checkpoints()] == ["ckpt-1_3.ckpt", "ckpt-1_2.ckpt", "ckpt-1_1.ckpt"]
    finally:
        m.close()


def test_the_snapshot_is_the_state_at_save_time(tmp_path, net, monkeypatch) -> None:
    held = HeldWrites(monkeypatch)
    m = CheckpointManager(str(tmp_path), model=net, async_save=True)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    path = m.save(1, 1)
    assert held.started.wait(10)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)  # training goes on while the write is held
    held.gate.set()
    m.close()
    loaded = tr.load_checkpoint(str(path))
    for name, value in before.items():
        assert torch.equal(loaded[name], value), name


def test_nothing_is_newest_or_retained_away_before_the_commit(tmp_path, net, monkeypatch) -> None:
    m = CheckpointManager(str(tmp_path), model=net, async_save=True, keep=1)
    first = m.save(1, 1)
    m.wait()
    held = HeldWrites(monkeypatch)
    second = m.save(1, 2)
    assert held.started.wait(10)
    assert m.last_saved == first  # the running save is not the newest yet
    assert [e.path for e in m.checkpoints()] == [first]  # retention has not run
    assert os.path.exists(str(first))
    held.gate.set()
    m.close()
    assert m.last_saved == second
    assert [e.path for e in m.checkpoints()] == [second]  # keep=1 ran after the commit


def test_skip_drops_a_save_due_while_one_runs_and_says_so_once(tmp_path, net, monkeypatch, tr_log) -> None:
    held = HeldWrites(monkeypatch)
    m = CheckpointManager(str(tmp_path), model=net, async_save=True, on_busy="skip")
    running = m.save(1, 1)
    assert held.started.wait(10)
    assert m.save(1, 2) is None
    warnings = _messages(tr_log, logging.WARNING)
    assert warnings == [f"skipped saving {tmp_path / 'ckpt-1_2.ckpt'}: the background save of {running} is "
                        "still running (on_busy='skip'; save less often to keep every save)"]
    held.gate.set()
    m.wait()
    third = m.save(1, 3)  # the writer is free again: saved
    m.close()
    assert [e.path for e in m.checkpoints()] == [third, running]
    assert len(_messages(tr_log, logging.WARNING)) == 1


def test_wait_blocks_until_the_running_save_committed_and_logs_it(tmp_path, net, monkeypatch,
                                                                    tr_log) -> None:
    held = HeldWrites(monkeypatch)
    m = CheckpointManager(str(tmp_path), model=net, async_save=True)  # on_busy="wait" by default
    running = m.save(1, 1)
    assert held.started.wait(10)
    release = threading.Timer(0.3, held.gate.set)
    release.start()
    second = m.save(1, 2)  # blocks until the first is committed
    assert held.gate.is_set()
    assert os.path.exists(str(running))
    m.close()
    assert [e.path for e in m.checkpoints()] == [second, running]
    waits = [s for s in _messages(tr_log, logging.INFO) if "waits for" in s]
    assert waits == [f"saving {second} waits for the background save of {running} (saves are due faster "
                     "than they are written; save less often, or on_busy='skip')"]


def test_a_breakpoint_waits_even_under_skip(tmp_path, net, monkeypatch) -> None:
    held = HeldWrites(monkeypatch)
    m = CheckpointManager(str(tmp_path), model=net, async_save=True, on_busy="skip")
    m.save(1, 1)
    assert held.started.wait(10)
    threading.Timer(0.2, held.gate.set).start()
    path = m.save_breakpoint(1, 2, reason=RuntimeError("boom"))
    m.close()
    assert os.path.exists(path)


def test_a_background_failure_is_raised_by_the_next_save_even_when_idle(tmp_path, net,
                                                                        monkeypatch) -> None:
    m = CheckpointManager(str(tmp_path), model=net, async_save=True)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(manager_module, "write_encoded", full)
    m.save(1, 1)
    while m.slot.saving is not None:
        time.sleep(0.01)
    with pytest.raises(AsyncSaveError, match=r"background save of .*ckpt-1_1\.ckpt failed: \[Errno 28\]"):
        m.save(1, 2)
    m.close()


def test_an_unknown_on_busy_policy_is_refused_with_the_choices(tmp_path, net) -> None:
    with pytest.raises(CheckpointConfigError) as err:
        CheckpointManager(str(tmp_path), model=net, async_save=True, on_busy="later")
    assert str(err.value) == ("on_busy='later' is not a policy; use 'wait' (block until the previous "
                              "background save is committed, then save) or 'skip' (drop this save and "
                              "keep training)")


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="no setpriority on this platform")
def test_the_writer_thread_runs_at_a_lower_cpu_priority(writer) -> None:
    """The write competes with training for CPU, not for the GIL: the worker is niced (+10)."""
    seen: list[int] = []
    writer.submit(lambda: seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())), "x")
    writer.wait()
    main = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert seen == [min(19, main + 10)]


def test_waiting_for_a_job_calls_its_on_wait_first() -> None:
    """A paced write is told when somebody waits for it (and then goes at full speed)."""
    hurry = threading.Event()
    w = AsyncWriter()
    w.submit(lambda: hurry.wait(60), "paced", on_wait=hurry.set)
    start = time.monotonic()
    w.wait()
    # Unloaded wait() returns in milliseconds; 30 s only tells "hurried" from the job's own 60 s wait.
    assert hurry.is_set() and time.monotonic() - start < 30
    w.close()
