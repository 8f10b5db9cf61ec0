"""The README's torchrun command (the block marked ``id=torchrun-resume``): 2 ranks, SIGTERM to the
launcher, the same command resumes (and removes the parts of a save a kill interrupted)."""

from __future__ import annotations

import re
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path

from tests.distributed.launch import Launcher, committed, every_tensor, manifest_info
from tests.docs_blocks import block

STOP = re.compile(r"SIGTERM at epoch (\d+) step (\d+); checkpoint (\S+); exiting with 143")


def readme_command() -> list[str]:
    """The block marked ``id=torchrun-resume`` (README.md), run as ``python -m torch.distributed.run``."""
    [line] = [x for x in block("torchrun-resume").code.splitlines() if x.strip() and not x.startswith("#")]
    words = shlex.split(line.split(" #", 1)[0])
    assert words[0] == "torchrun"
    return [sys.executable, "-m", "torch.distributed.run", *words[1:]]


def _wait_committed(directory: Path, launcher: Launcher) -> None:
    while not committed(directory, "mlp") and launcher.proc.poll() is None:
        time.sleep(0.1)


def test_readme_command_sigterm_to_launcher_then_same_command_finishes(tmp_path: Path) -> None:
    cmd = readme_command()
    first = Launcher(cmd, tmp_path)
    _wait_committed(tmp_path / "ckpt", first)
    first.proc.send_signal(signal.SIGTERM)
    assert first.finish() != 0  # torchrun itself reports the signal; each rank exits 143
    stops = STOP.findall(first.stderr)
    assert len(stops) == 2, first.output()[-3000:]  # both ranks: the same step and checkpoint
    assert stops[0] == stops[1]
    epoch, step, path = stops[0]
    saved = committed(tmp_path / "ckpt", "mlp")[-1]
    assert str(saved) == str(tmp_path / path) or str(saved).endswith(path)
    assert saved.name == f"mlp-{epoch}_{step}.ckpt"
    info = manifest_info(saved)
    assert info["world_size"] == 2 and len(info["rank_parts"]) == 2 and info["step"] == int(step)
    assert 10 <= int(step) < 60
    assert not any("done:" in line for line in first.lines)
    stopped = {name.split("/", 1)[1]: t for name, t in every_tensor(saved).items()}  # before retention
    interrupted = tmp_path / "ckpt" / "mlp-1_59.ckpt"  # what a SIGKILL mid-save leaves: parts, no manifest
    shutil.copytree(saved, interrupted)
    (interrupted / "manifest.json").unlink()

    second = Launcher(cmd, tmp_path)
    assert second.finish() == 0, second.output()[-3000:]
    assert f"resumed from {path} at epoch 1, step {step}" in second.output()
    assert not interrupted.exists()  # rank 0 removed it, holding the run lock, before the first save
    assert second.output().count("removing ckpt/mlp-1_59.ckpt: an interrupted save's parts") == 1
    assert sum(line.startswith("done: 60 steps") for line in second.lines) == 1  # rank 0 only
    final = committed(tmp_path / "ckpt", "mlp")[-1]
    assert final.name == "mlp-1_60.ckpt"
    weights = {name.split("/", 1)[1]: t for name, t in every_tensor(final).items()}
    key = "model.dense_relu_sequential.0.weight"  # the DDP replica, written once
    assert weights[key].shape == (512, 784) and not weights[key].equal(stopped[key])
