"""A save that really fails (the kernel refuses the bytes) raises, keeps the old file, leaves no temporary.

The failure is real, not a patched function: a subprocess lowers its file-size
limit (RLIMIT_FSIZE, SIGXFSZ ignored) below the checkpoint's size, so write(2)
fails with EFBIG in the middle of the file, as it would with ENOSPC on a full
disk. A save that swallowed the error would return normally and fail here.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import torch

import torchresume as tr

SAVER = """
import json, os, resource, signal, sys, torch, torchresume as tr
path, mode = sys.argv[1], sys.argv[2]
tr.save_checkpoint({"w": torch.ones(4)}, path)  # the previous, committed file
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of killing
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # 1 MiB; the new file has 16 MiB
result = {"raised": None}
try:
    tr.save_checkpoint({"w": torch.zeros(4 << 20)}, path, async_save=mode == "async")
    if mode == "async":
        tr.wait_async_saves()
except Exception as exc:
    cause = exc.__cause__ if isinstance(exc, tr.AsyncSaveError) else exc
    result = {"raised": type(exc).__name__, "cause": type(cause).__name__,
              "errno": getattr(cause, "errno", None), "message": str(exc)}
print(json.dumps(result))
"""


def _save_past_the_limit(tmp_path, mode: str) -> dict:
    script = tmp_path / "saver.py"
    script.write_text(SAVER)
    path = tmp_path / "ckpts" / "a.ckpt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, str(script), str(path), mode], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # whatever happened, the previous file is intact and nothing else is left behind
    assert torch.equal(tr.load_checkpoint(str(path))["w"], torch.ones(4))
    assert os.listdir(path.parent) == ["a.ckpt"]
    return result


def test_failed_write_raises_keeps_previous_file_and_no_temporary(tmp_path) -> None:
    result = _save_past_the_limit(tmp_path, "sync")
    assert result["raised"] is not None, "the save returned normally although write() failed"
    assert (result["raised"], result["errno"]) == ("CheckpointWriteError", errno.EFBIG), result  # an OSError


def test_failed_background_write_is_raised_by_wait(tmp_path) -> None:
    result = _save_past_the_limit(tmp_path, "async")
    assert result["raised"] == "AsyncSaveError", result
    assert (result["cause"], result["errno"]) == ("CheckpointWriteError", errno.EFBIG), result
    assert "background save of" in result["message"] and "a.ckpt failed" in result["message"]
