"""storage/pacing.py: background writes held to a rate, lifted when somebody waits for them."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from torchresume.errors import CheckpointConfigError
from torchresume.files import read_checkpoint, verify
from torchresume.manager import CheckpointManager
from torchresume.storage.local import LocalWriter
from torchresume.storage.pacing import PACE_CHUNK, Pace, PacedWriter, check_write_rate
from torchresume.train import CheckpointConfig

MB = 1_000_000


def _write(path, data: bytes, pace: Pace) -> PacedWriter:
    writer = PacedWriter(LocalWriter(str(path), size_hint=len(data)), pace)
    writer.write(data)
    writer.commit()
    return writer


def test_a_paced_write_takes_at_least_size_over_rate_and_writes_every_byte(tmp_path) -> None:
    data = os.urandom(3 * PACE_CHUNK + 12345)  # three whole pieces and a partial one
    start = time.monotonic()
    writer = _write(tmp_path / "f", data, Pace(50 * MB))
    elapsed = time.monotonic() - start
    assert elapsed >= len(data) / (50 * MB) * 0.99, elapsed  # 0.50 s at 50 MB/s
    assert writer.sent == len(data) and writer.paused > 0
    assert (tmp_path / "f").read_bytes() == data


def test_hurry_lifts_the_limit_mid_write(tmp_path) -> None:
    """Hurried during its first piece, a write paced to take 34 s pauses no more (``paused`` is
    the writer's own account of its pauses, not a wall-clock bound on the machine)."""
    data = os.urandom(4 * PACE_CHUNK)  # 34 s at 1 MB/s
    pace = Pace(1 * MB)
    inner = LocalWriter(str(tmp_path / "f"), size_hint=len(data))
    real_write = inner.write

    def write_then_hurry(piece) -> None:
        real_write(piece)
        pace.hurry.set()  # somebody starts waiting, as the next save would
    inner.write = write_then_hurry  # type: ignore[method-assign]
    writer = PacedWriter(inner, pace)
    writer.write(data)
    writer.commit()
    assert writer.sent == len(data) and writer.paused < 1.0, writer.paused
    assert (tmp_path / "f").read_bytes() == data


def test_abort_leaves_nothing(tmp_path) -> None:
    writer = PacedWriter(LocalWriter(str(tmp_path / "f")), Pace(1000 * MB))
    writer.write(b"x" * 1000)
    writer.abort()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("bad", [0, -5, float("nan"), float("inf"), True, "200"])
def test_a_bad_rate_is_refused_with_how_to_fix(bad) -> None:
    with pytest.raises(CheckpointConfigError) as err:
        check_write_rate(bad, async_save=True)
    assert str(err.value) == (f"write_mb_per_s={bad!r} is not a write rate; give a positive number of MB/s "
                              "(e.g. write_mb_per_s=200) or None for no limit")


def test_config_refuses_a_rate_without_async_saves() -> None:
    with pytest.raises(CheckpointConfigError, match=r"^write_mb_per_s=200 paces background saves; set "
                                                    r"async_save=True too, or leave write_mb_per_s=None$"):
        CheckpointConfig(save_checkpoint_steps=10, write_mb_per_s=200)
    assert CheckpointConfig(save_checkpoint_steps=10, async_save=True, write_mb_per_s=200).write_mb_per_s == 200


def test_manager_paces_background_saves_and_waiting_hurries_them(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="torchresume")
    torch.manual_seed(0)
    net = nn.Linear(2048, 2048)  # 16.8 MB of weights: 84 s a save at 0.2 MB/s
    m = CheckpointManager(str(tmp_path), model=net, async_save=True, write_mb_per_s=0.2, keep=5)
    try:
        start = time.monotonic()
        first = m.save(1, 1)
        assert m.saving == first  # returned while the paced write goes on
        with torch.no_grad():
            net.weight.add_(1.0)
        second = m.save(1, 2)  # waits for the first, which stops pacing
        m.wait()  # the second is hurried too
        # Hurried, both saves take 1-2 s unloaded; 60 s is 30x that and still tells them from 168 s paced.
        assert time.monotonic() - start < 60, "waiting should have lifted the pacing (unhurried: 168 s)"
        assert (f"saving {second} waits for the background save of {first} (saves are due faster than they "
                "are written; save less often, raise write_mb_per_s (now 0.2 MB/s), or on_busy='skip')"
                in caplog.messages)
    finally:
        m.close()
    assert verify(first).valid and verify(second).valid
    assert torch.equal(read_checkpoint(second).tree["weight"], net.weight.detach())
    assert not torch.equal(read_checkpoint(first).tree["weight"], net.weight.detach())


def test_breakpoints_are_never_paced_and_sync_managers_refuse_a_rate(tmp_path) -> None:
    net = nn.Linear(2048, 2048)
    with pytest.raises(CheckpointConfigError, match=r"^write_mb_per_s=0.1 paces background saves; set "
                                                    r"async_save=True too, or leave write_mb_per_s=None$"):
        CheckpointManager(str(tmp_path), model=net, write_mb_per_s=0.1)
    m = CheckpointManager(str(tmp_path), model=net, async_save=True, write_mb_per_s=0.1)  # 168 s if paced
    try:
        path = m.save(1, 1, breakpoint=True)
        deadline = time.monotonic() + 30  # unpaced, the write takes under a second unloaded; paced 168 s
        while m.saving is not None and time.monotonic() < deadline:  # nobody waits: no hurry either
            time.sleep(0.05)
        assert m.saving is None, "the breakpoint's write was paced"
    finally:
        m.close()
    assert path is not None and verify(path).valid


EXIT_WITHOUT_CLOSE = """
import sys, torch
from torch import nn
from torchresume.manager import CheckpointManager
torch.manual_seed(0)
m = CheckpointManager(sys.argv[1], model=nn.Linear(2048, 2048), async_save=True, write_mb_per_s=0.1)
print(m.save(1, 1), flush=True)  # 168 s at 0.1 MB/s; the script ends without wait() or close()
"""


def test_interpreter_exit_lifts_the_pacing_and_still_commits(tmp_path) -> None:
    """concurrent.futures joins its threads before atexit hooks run: the hurry must come before that."""
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", EXIT_WITHOUT_CLOSE, str(tmp_path)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    # Unloaded the script runs 3-4 s (start-up, one hurried save); 90 s is over 20x that, and under 168 s.
    assert time.monotonic() - start < 90, "the exit waited for the paced write at its pace (168 s)"
    assert verify(done.stdout.strip()).valid
