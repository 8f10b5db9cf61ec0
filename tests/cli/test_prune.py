"""`torchresume prune`: deletes exactly the older checkpoints of each prefix, never the newest valid one."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import torch

import torchresume as tr
from torchresume import inspection
from torchresume.cli.main import main


def _populate(directory) -> None:
    """a-1_1..a-1_5 and b-1_1..b-1_3 saved in that order, a breakpoint, and files that are not checkpoints."""
    net = torch.nn.Linear(3, 2)
    a = tr.CheckpointManager(str(directory), model=net, prefix="a", keep=None)
    b = tr.CheckpointManager(str(directory), model=net, prefix="b", keep=None)
    for step in range(1, 6):
        a.save(1, step, step)
        if step <= 3:
            b.save(1, step, step)
    a.save(1, 2, 2, breakpoint=True)
    (directory / "a-graph.json").write_text("{}")
    (directory / "notes.txt").write_text("keep me")


def _names(directory) -> set[str]:
    return set(os.listdir(directory))


def test_prune_keeps_the_newest_k_of_each_prefix(tmp_path, capsys) -> None:
    _populate(tmp_path)
    before = _names(tmp_path)
    assert main(["prune", str(tmp_path), "--keep", "2"]) == 0
    doomed = {"a-1_1.ckpt", "a-1_2.ckpt", "a-1_3.ckpt", "b-1_1.ckpt"}
    assert _names(tmp_path) == before - doomed
    printed = {line.removeprefix("deleted ").rsplit("/", 1)[-1]
               for line in capsys.readouterr().out.splitlines()}
    assert printed == doomed
    assert main(["prune", str(tmp_path), "--keep", "2"]) == 0  # idempotent
    assert _names(tmp_path) == before - doomed


def test_prune_command_in_a_real_process_and_bad_keep(tmp_path) -> None:
    _populate(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = [sys.executable, "-m", "torchresume", "prune", str(tmp_path)]
    bad = subprocess.run([*run, "--keep", "0"], env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--keep must be at least 1, got 0" in bad.stderr
    assert len([n for n in _names(tmp_path) if n.endswith(".ckpt")]) == 9  # nothing deleted
    ok = subprocess.run([*run, "--keep", "1"], env=env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert sorted(n for n in _names(tmp_path) if n.endswith(".ckpt")) == [
        "a-1_2_breakpoint.ckpt", "a-1_5.ckpt", "b-1_3.ckpt"]


def test_prune_never_deletes_the_newest_valid_checkpoint(tmp_path) -> None:
    net = torch.nn.Linear(3, 2)
    mgr = tr.CheckpointManager(str(tmp_path), model=net, prefix="a", keep=None)
    for step in (1, 2):
        mgr.save(1, step, step)
    time.sleep(0.01)
    good = (tmp_path / "a-1_2.ckpt").read_bytes()
    (tmp_path / "a-1_3.ckpt").write_bytes(good[: len(good) // 2])  # newest, cut short: invalid
    (tmp_path / "a-1_4.ckpt").write_bytes(b"")  # newer still, empty: invalid
    assert main(["prune", str(tmp_path), "--keep", "1"]) == 0
    left = _names(tmp_path)
    assert "a-1_2.ckpt" in left, "the newest valid checkpoint was deleted"
    assert "a-1_1.ckpt" not in left
    info = tr.CheckpointManager(str(tmp_path), model=torch.nn.Linear(3, 2), prefix="a").restore_latest()
    assert info is not None and info["global_step"] == 2


def _flip_middle_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_prune_never_deletes_the_only_good_checkpoint_of_an_encrypted_run(tmp_path, capsys) -> None:
    """Without the key an encrypted file cannot be verified: prune refuses and deletes nothing."""
    key = bytes(range(32))
    net = torch.nn.Linear(3, 2)
    m = tr.CheckpointManager(str(tmp_path), model=net, prefix="e", keep=None, enc_key=key)
    m.save(1, 1, 1)
    m.save(2, 2, 2)
    _flip_middle_byte(tmp_path / "e-2_2.ckpt")
    before = _names(tmp_path)
    assert main(["prune", str(tmp_path), "--keep", "1"]) == 1
    assert capsys.readouterr().err == (
        f"torchresume: error: {tmp_path}/e-2_2.ckpt is encrypted: pruning keeps the newest checkpoint that "
        "verifies, which takes the key; pass --dec-key-hex <the key, as hex>\n")
    assert _names(tmp_path) == before
    assert main(["prune", str(tmp_path), "--keep", "1", "--dec-key-hex", key.hex()]) == 0
    assert {"e-1_1.ckpt", "e-2_2.ckpt"} <= _names(tmp_path)  # with the key: e-1_1 is the newest valid one
    assert inspection.verify(str(tmp_path / "e-1_1.ckpt"), key).valid
