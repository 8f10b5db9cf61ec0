"""Launching tests/distributed/worker.py under a real torchrun (gloo on CPU) and reading its results."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WORKER = Path(__file__).with_name("worker.py")
TORCHRUN = Path(sys.executable).with_name("torchrun")
LIMIT_S = 120


@dataclass
class Launch:
    """One finished torchrun: exit code, output, seconds taken and each rank's JSON result."""

    returncode: int
    output: str
    seconds: float
    results: dict[int, dict[str, Any]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun(nproc: int, scenario: str, directory: Path | str, out: Path, *, timeout: float = LIMIT_S,
             worker: Path = WORKER) -> Launch:
    """Run ``scenario`` of ``worker`` on ``nproc`` ranks; results from ``out/rank{r}.json``."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("rank*.json"):
        old.unlink()
    cmd = [str(TORCHRUN), "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), str(worker), scenario, str(directory), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    results = {int(p.stem[4:]): json.loads(p.read_text()) for p in out.glob("rank*.json")}
    return Launch(proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start, results)
