"""async_writer.py: jobs run in order; a failure is kept and re-raised, never lost."""

from __future__ import annotations

import threading

import pytest

from torchresume.async_writer import AsyncWriter
from torchresume.errors import AsyncSaveError


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
