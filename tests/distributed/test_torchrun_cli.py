"""``torchrun -m torchresume train``: 2 ranks, SIGTERM to the launcher, the same command resumes."""

from __future__ import annotations

import re
import signal
from pathlib import Path

from tests.distributed.launch import Launcher, committed, every_tensor, manifest_info, torchrun_cmd, train_cli

STOP = re.compile(r"SIGTERM at epoch (\d+) step (\d+); checkpoint (\S+); exiting with 143")


def test_sigterm_to_launcher_then_same_command_finishes(tmp_path: Path) -> None:
    cmd = torchrun_cmd(2, train_cli(tmp_path / "ckpt", "--epochs", "1", "--steps-per-epoch", "60",
                                    "--save-steps", "1000", "--print-every", "1"))
    first = Launcher(cmd, tmp_path)
    assert first.wait_for("epoch: 1 step: 3,"), first.output()[-3000:]
    first.proc.send_signal(signal.SIGTERM)
    assert first.finish() != 0
    stops = STOP.findall(first.stderr)
    assert len(stops) == 2, first.output()[-3000:]  # both ranks, the same step and checkpoint
    assert stops[0] == stops[1]
    epoch, step, path = stops[0]
    [saved] = committed(tmp_path / "ckpt", "mlp")
    assert str(saved) == path and saved.name == f"mlp-{epoch}_{step}.ckpt"
    info = manifest_info(saved)
    assert info["world_size"] == 2 and len(info["rank_parts"]) == 2 and info["step"] == int(step)
    assert 3 <= int(step) < 60
    assert sum("done:" in line for line in first.lines) == 0

    second = Launcher(cmd, tmp_path)
    assert second.finish() == 0, second.output()[-3000:]
    assert f"resumed from {path} at epoch 1, step {step}" in second.output()
    assert sum(line.startswith("done: 60 steps") for line in second.lines) == 1  # rank 0 only
    final = committed(tmp_path / "ckpt", "mlp")[-1]
    assert final.name == "mlp-1_60.ckpt"
    weights = {name.split("/", 1)[1]: t for name, t in every_tensor(final).items()}
    stopped = {name.split("/", 1)[1]: t for name, t in every_tensor(saved).items()}
    key = "model.dense_relu_sequential.0.weight"  # the DDP replica, written once
    assert weights[key].shape == (512, 784) and not weights[key].equal(stopped[key])
