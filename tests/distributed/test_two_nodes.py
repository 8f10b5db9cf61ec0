"""Two torchrun launchers on this machine as two "nodes" (c10d rendezvous on 127.0.0.1) train and resume."""

from __future__ import annotations

from pathlib import Path

from tests.distributed.launch import Launcher, committed, free_port, manifest_info, torchrun_cmd, train_cli


def _nodes(tmp_path: Path, epochs: int, job: str) -> list[Launcher]:
    port = free_port()
    launchers = []
    for node in (0, 1):
        extra = ["--nnodes", "2", "--node-rank", str(node), "--rdzv-backend", "c10d",
                 "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", job]
        cmd = torchrun_cmd(1, train_cli(tmp_path / "ckpt", "--epochs", str(epochs),
                                        "--steps-per-epoch", "6", "--save-steps", "3"), extra=extra)
        launchers.append(Launcher(cmd, tmp_path))
    return launchers


def test_two_nodes_train_then_resume(tmp_path: Path) -> None:
    first = _nodes(tmp_path, 1, "first")
    assert [launcher.finish() for launcher in first] == [0, 0], first[0].output()[-3000:]
    assert [p.name for p in committed(tmp_path / "ckpt", "mlp")] == ["mlp-1_3.ckpt", "mlp-1_6.ckpt"]

    second = _nodes(tmp_path, 2, "second")
    assert [launcher.finish() for launcher in second] == [0, 0], second[1].output()[-3000:]
    out = second[0].output() + second[1].output()
    assert "at epoch 1, step 6 (global step 6)" in out
    newest = committed(tmp_path / "ckpt", "mlp")[-1]
    assert newest.name == "mlp-2_6.ckpt"
    info = manifest_info(newest)
    assert info["world_size"] == 2 and info["global_step"] == 12
