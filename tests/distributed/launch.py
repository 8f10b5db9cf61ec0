"""Real torchrun launchers for the distributed tests (gloo on CPU), and readers of what they wrote."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
WORKER = str(Path(__file__).with_name("elastic_worker.py"))
LIMIT_S = 300  # a safety net against a hung launcher, never a measured duration


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun_cmd(nproc: int, target: list[str], *, extra: list[str] | None = None) -> list[str]:
    """``torchrun --nproc-per-node N [extra] target...`` (standalone rendezvous unless extra says)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    return [*launcher, *(extra or ["--standalone"]), *target]


def train_cli(train_dir: Path, *args: str) -> list[str]:
    """The torchresume train command on the bundled MNIST, small and deterministic."""
    return ["-m", "torchresume", "train", "--model", "mlp", "--device", "cpu", "--deterministic",
            "--train-url", str(train_dir), "--batch-size", "16", *args]


class Launcher:
    """One torchrun launcher; its stdout lines are collected as they arrive."""

    def __init__(self, cmd: list[str], cwd: Path) -> None:
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1,
                                     start_new_session=True)
        self.lines: list[str] = []
        self.stderr = ""
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()

    def wait_for(self, needle: str, count: int = 1, timeout: float = LIMIT_S) -> bool:
        """Until ``count`` stdout lines contain ``needle``; False if the launcher ended first."""
        def seen() -> int:
            return sum(needle in line for line in self.lines)
        with self._cond:
            return self._cond.wait_for(lambda: seen() >= count or self.proc.poll() is not None,
                                       timeout=timeout) and seen() >= count

    def workers(self) -> list[int]:
        """The pids of the launcher's worker processes."""
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            return [int(p) for p in path.read_text().split()]
        except OSError:
            return []

    def finish(self, timeout: float = LIMIT_S) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, 9)
        self.proc.wait()
        return code

    def output(self) -> str:
        return "\n".join(self.lines) + "\n" + self.stderr


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=LIMIT_S)


def committed(directory: Path, prefix: str) -> list[Path]:
    """Committed sharded checkpoints of ``prefix`` in ``directory``, oldest first."""
    from torchresume.distributed import ShardedStore
    mgr = ShardedStore(str(directory), prefix=prefix)
    return [Path(e.path) for e in reversed(mgr.checkpoints())]


def every_tensor(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor in every part file of a sharded checkpoint, named ``file/tensor``."""
    from safetensors.torch import load_file
    out: dict[str, torch.Tensor] = {}
    for part in sorted(path.glob("*.safetensors")):
        for name, tensor in load_file(str(part)).items():
            out[f"{part.name}/{name}"] = tensor
    return out


def manifest_info(path: Path) -> dict[str, Any]:
    from torchresume.files import directory
    return dict(directory.read_manifest(str(path))["info"])
