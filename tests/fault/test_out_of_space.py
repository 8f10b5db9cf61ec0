"""Out of space, for real: a save onto a full filesystem leaves every earlier checkpoint intact.

Two real kernels errors, no fault injection: ENOSPC on a 1 MiB tmpfs mounted
by the test (needs root; skipped with the reason otherwise), and EFBIG from a
file-size limit (RLIMIT_FSIZE) in a subprocess, which runs anywhere.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import uuid

import pytest
import torch

import torchresume as tr
from torchresume.errors import CheckpointWriteError
from torchresume.files import verify


@pytest.fixture
def small_fs(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", f"tmpfs-{uuid.uuid4().hex[:6]}",
                           str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the RLIMIT_FSIZE test covers it")
    yield str(mount)
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_enospc_on_a_real_small_filesystem(small_fs) -> None:
    first = os.path.join(small_fs, "net-1_1.ckpt")
    tr.save_checkpoint({"w": torch.ones(16 << 10)}, first)  # 64 KiB: fits
    second = os.path.join(small_fs, "net-1_2.ckpt")
    with pytest.raises(CheckpointWriteError) as info:
        tr.save_checkpoint({"w": torch.zeros(1 << 20)}, second)  # 4 MiB: does not
    message = str(info.value)
    assert message.startswith(f"{second}: cannot write the checkpoint: No space left on device; it needs 4.0 MiB, ")
    assert message.endswith(f"free in {small_fs}; free space or save elsewhere (earlier checkpoints are intact)")
    assert info.value.errno == 28
    assert sorted(os.listdir(small_fs)) == ["net-1_1.ckpt"]  # no temporary left, nothing committed
    assert verify(first).valid
    assert torch.equal(tr.load_checkpoint(first)["w"], torch.ones(16 << 10))


def test_enospc_through_o_direct(small_fs, monkeypatch) -> None:
    """The O_DIRECT path (storage/direct.py, used for large files) fails the same way on a full disk."""
    from torchresume.storage import local
    monkeypatch.setattr(local, "DIRECT_MIN_BYTES", 0)
    first = os.path.join(small_fs, "net-1_1.ckpt")
    tr.save_checkpoint({"w": torch.ones(16 << 10)}, first)
    second = os.path.join(small_fs, "net-1_2.ckpt")
    with pytest.raises(CheckpointWriteError) as info:
        tr.save_checkpoint({"w": torch.zeros(1 << 20)}, second)
    expected = f"{second}: cannot write the checkpoint: No space left on device; it needs 4.0 MiB, "
    assert str(info.value).startswith(expected)
    assert info.value.errno == 28
    assert sorted(os.listdir(small_fs)) == ["net-1_1.ckpt"]
    assert torch.equal(tr.load_checkpoint(first)["w"], torch.ones(16 << 10))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_training_stops_with_one_line_when_the_disk_is_full(small_fs, tmp_path, mode) -> None:
    """The CLI: a full disk stops training with exit 1 and one line; the earlier checkpoint verifies.

    With --async-save the failed background write is reported by the next save or at the end.
    """
    exe = os.path.join(os.path.dirname(sys.executable), "torchresume")
    background = ["--async-save"] if mode == "async" else []
    done = subprocess.run([exe, "train", "--model", "lenet5", "--epochs", "1", "--steps-per-epoch", "6",
                           "--save-steps", "2", "--keep-max", "9", "--train-url", small_fs, *background],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("torchresume: error:")]
    assert len(errors) == 1 and "No space left on device; it needs" in errors[0], done.stderr
    assert "Traceback" not in done.stderr
    leftovers = [n for n in os.listdir(small_fs) if ".tmp-" in n]
    assert leftovers == []
    saved = sorted(n for n in os.listdir(small_fs) if n.endswith(".ckpt"))
    assert saved and all(verify(os.path.join(small_fs, n)).valid for n in saved), saved
    named = re.search(r"(\S+\.ckpt): cannot write the checkpoint", errors[0])
    assert named is not None, errors[0]
    failed = named.group(1)
    if mode == "async":
        assert errors[0].startswith(f"torchresume: error: background save of {failed} failed: "), errors[0]
    assert os.path.basename(failed) not in saved and failed.startswith(small_fs)


def test_efbig_from_a_file_size_limit(tmp_path) -> None:
    """RLIMIT_FSIZE makes the kernel refuse the write (EFBIG); works without root."""
    script = textwrap.dedent(f"""
        import os, resource, signal, torch, torchresume as tr
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        tr.save_checkpoint({{"w": torch.ones(1024)}}, {str(tmp_path / "a.ckpt")!r})
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        try:
            tr.save_checkpoint({{"w": torch.zeros(1 << 20)}}, {str(tmp_path / "b.ckpt")!r})
        except tr.CheckpointWriteError as exc:
            print("ERROR", exc.errno, exc)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"ERROR 27 {tmp_path / 'b.ckpt'}: cannot write the checkpoint: File too large; "
                                  "it needs 4.0 MiB"), done.stdout
    assert sorted(os.listdir(tmp_path)) == ["a.ckpt"]
    assert torch.equal(tr.load_checkpoint(str(tmp_path / "a.ckpt"))["w"], torch.ones(1024))
