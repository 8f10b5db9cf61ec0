"""SIGKILL a process in the middle of saves: the final name always holds a valid file."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import torchresume as tr
from tests.fault.killing import temporaries
from torchresume.inspection import verify
from torchresume.storage.local import clean_stale_temps

WRITER = """
import sys, torch, torchresume as tr
path, background = sys.argv[1], sys.argv[2] == "async"
state = {f"t{i}": torch.full((1 << 20,), float(i)) for i in range(48)}  # 192 MiB
n = 0
while True:
    n += 1
    for t in state.values():
        t.fill_(float(n))
    tr.save_checkpoint(state, path, append_dict={"n": n}, async_save=background)
    if background:  # training changes the state while the write runs, then waits for it
        for t in state.values():
            t.fill_(-1.0)
        tr.wait_async_saves()
    print(n, flush=True)
"""


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_sigkill_mid_save_never_leaves_a_bad_file(tmp_path, mode) -> None:
    path = str(tmp_path / "ckpt" / "state.ckpt")
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    rng = random.Random(1234)
    directory = os.path.dirname(path)
    mid_save = 0
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, str(script), path, mode], stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout is not None
        proc.stdout.readline()  # one save committed; the next ones are in flight
        time.sleep(rng.uniform(0.0, 1.0))
        while True:  # freeze it while a write is in flight (between saves it only fills tensors)
            os.kill(proc.pid, signal.SIGSTOP)
            if temporaries(Path(directory), proc.pid):
                mid_save += 1
                break
            os.kill(proc.pid, signal.SIGCONT)
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        assert verify(path).valid, verify(path).reason
        d = tr.load_checkpoint(path)
        assert torch.all(d["t7"] == float(d["n"]))  # every tensor from the same save
        assert torch.all(d["t40"] == float(d["n"]))
        clean_stale_temps(directory)
        assert os.listdir(directory) == ["state.ckpt"]
    print(f"\nwriter ({mode} saves): 6 kills: 0 mid-step, {mid_save} mid-save", flush=True)
    assert mid_save == 6
