"""The installed ``torchresume`` command on MindSpore files, written by MindSpore and by
torchresume: inspect, verify, ls, diff, eval --ckpt, convert both ways.

The LeNet5 fixture was trained 2 epochs by real MindSpore 2.10 with seed 003's pipeline
(scripts/mindspore_seed_lenet.py); lenet_mindspore_eval.json is MindSpore's own eval of it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import torch

import torchresume as tr
from tests.format.mindspore_helpers import CBC_KEY, FIXTURES, GCM_KEY, raw
from torchresume.api import read_checkpoint
from torchresume.app.models import LeNet5

CLI = os.path.join(os.path.dirname(sys.executable), "torchresume")
LENET = FIXTURES / "lenet-2_1875.ckpt"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=300)


def test_inspect_mindspore_files() -> None:
    proc = cli("inspect", str(FIXTURES / "bn_momentum.ckpt"))
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^format: +mindspore$", proc.stdout, re.M)
    assert "bn.moving_variance" in proc.stdout and "moments.fc.weight" in proc.stdout
    doc = json.loads(cli("inspect", str(FIXTURES / "append_dict.ckpt"), "--json").stdout)
    assert doc["format"] == "mindspore" and doc["values"]["a_str"] == "héllo wörld ✓"
    proc = cli("inspect", str(FIXTURES / "cbc.ckpt"))
    assert re.search(r"^format: +encrypted  \(encrypted: pass --dec-key-hex to read it\)$", proc.stdout, re.M)
    assert re.search(r"^mode: +AES-CBC \(MindSpore\)$", proc.stdout, re.M)


def test_verify_mindspore_files(tmp_path: Path) -> None:
    assert cli("verify", str(FIXTURES / "crc.ckpt")).returncode == 0
    proc = cli("verify", str(FIXTURES / "crc_mismatch.ckpt"))
    assert proc.returncode == 1 and "CRC mismatch: the footer says" in proc.stdout
    assert cli("verify", str(FIXTURES / "gcm.ckpt"), "--dec-key-hex", GCM_KEY.hex()).returncode == 0
    assert cli("verify", str(FIXTURES / "cbc.ckpt"), "--dec-key-hex", CBC_KEY.hex()).returncode == 0
    proc = cli("verify", str(FIXTURES / "gcm.ckpt"), "--dec-key-hex", bytes(16).hex())
    assert proc.returncode == 1 and "decryption failed (AES-GCM)" in proc.stdout
    proc = cli("verify", str(FIXTURES / "short_content.ckpt"))
    assert proc.returncode == 1 and "MindSpore would silently pad it" in proc.stdout


def test_ls_and_diff_mixed_directory(tmp_path: Path) -> None:
    shutil.copy(LENET, tmp_path / "lenet-2_1875.ckpt")
    net = LeNet5()
    tr.load_checkpoint(str(LENET), net=net)
    tr.save_checkpoint(net, str(tmp_path / "lenet-3_1875.ckpt"), format="ckpt", crc_check=True)
    shutil.copy(FIXTURES / "truncated.ckpt", tmp_path / "lenet-1_1875.ckpt")
    proc = cli("ls", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()[1:]}
    assert sorted(lines) == ["lenet-1_1875.ckpt", "lenet-2_1875.ckpt", "lenet-3_1875.ckpt"]
    assert "INVALID" in lines["lenet-1_1875.ckpt"]
    # Plain MindSpore files (no torchresume run entry) are listed, never taken as the run's checkpoints.
    assert all(lines[n].endswith("a plain mindspore file without torchresume's run metadata; resume and "
                                 "retention never pick it as a checkpoint of the run (load it by name)")
               for n in ("lenet-2_1875.ckpt", "lenet-3_1875.ckpt"))
    proc = cli("diff", str(tmp_path / "lenet-2_1875.ckpt"), str(tmp_path / "lenet-3_1875.ckpt"))
    assert proc.returncode == 1, proc.stderr  # they differ
    assert "- moments.fc1.weight" in proc.stdout and "- global_step" in proc.stdout
    assert "fc1.weight" not in proc.stdout.replace("moments.fc1.weight", "")  # weights equal


def test_eval_a_mindspore_trained_lenet() -> None:
    """`torchresume eval` of MindSpore's LeNet5 is within 0.3 points of MindSpore's own eval."""
    want = json.loads((FIXTURES / "lenet_mindspore_eval.json").read_text())
    proc = cli("eval", "--ckpt", str(LENET))
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    mindspore_acc = want["in_order_eval_first_9984"]["acc"]
    print(f"torchresume eval {got['acc']:.4f} vs MindSpore {mindspore_acc:.4f} "
          f"(seed's shuffled eval {want['seed_eval']['acc']:.4f})")
    assert abs(got["acc"] - mindspore_acc) < 0.003
    assert abs(got["acc"] - want["seed_eval"]["acc"]) < 0.003


def test_convert_both_ways(tmp_path: Path) -> None:
    native = tmp_path / "n.ckpt"
    back = tmp_path / "m.ckpt"
    proc = cli("convert", str(FIXTURES / "bn_momentum.ckpt"), str(native))
    assert proc.returncode == 0, proc.stderr
    assert read_checkpoint(str(native)).format == "torchresume"
    proc = cli("convert", str(native), str(back), "--to", "mindspore")
    assert proc.returncode == 0, proc.stderr
    assert back.read_bytes() == (FIXTURES / "bn_momentum.ckpt").read_bytes()  # MindSpore's bytes
    enc = tmp_path / "e.ckpt"
    proc = cli("convert", str(FIXTURES / "gcm.ckpt"), str(enc), "--dec-key-hex", GCM_KEY.hex(),
               "--to", "mindspore", "--enc-key-hex", CBC_KEY.hex(), "--enc-mode", "AES-CBC")
    assert proc.returncode == 0, proc.stderr
    a = tr.load_checkpoint(str(enc), dec_key=CBC_KEY, dec_mode="AES-CBC")
    b = tr.load_checkpoint(str(FIXTURES / "gcm.ckpt"), dec_key=GCM_KEY)
    assert all(raw(a[k]) == raw(b[k]) for k in b)


def test_convert_a_torchresume_training_state_to_mindspore(tmp_path: Path) -> None:
    from tests.format.mindspore_helpers import trained_twin
    net, opt = trained_twin("momentum")
    mgr = tr.CheckpointManager(str(tmp_path / "run"), model=net, optimizer=opt, prefix="bn")
    path = mgr.save(1, 3, 3)
    mgr.close()  # lets its run lock go (a lock left held shows in later tests' run_lock._held)
    proc = cli("convert", path, str(tmp_path / "ms.ckpt"), "--to", "mindspore", "--crc")
    assert proc.returncode == 0, proc.stderr
    params = tr.load_checkpoint(str(tmp_path / "ms.ckpt"))
    assert torch.equal(params["bn.gamma"], net.bn.weight.data)
    assert int(params["global_step"][0]) == 3
    assert torch.equal(params["moments.head.bias"], opt.state[net.head.bias]["momentum_buffer"])


def test_training_continues_from_mindspore_with_its_momentum(tmp_path: Path) -> None:
    """Seed 003 across frameworks: MindSpore trained 2 epochs; torchresume trains epoch 3
    from that file, with MindSpore's momentum buffers in its SGD."""
    from torchresume.format.name_mapping import optimizer_from_mindspore
    params = tr.load_checkpoint(str(LENET))
    net = LeNet5()
    opt = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    assert tr.load_param_into_net(net, params)[0] == []
    assert tr.load_param_into_net(opt, params) == ([], [])
    for p, name in zip(net.parameters(), ("conv1.weight", "conv2.weight", "fc1.weight", "fc1.bias",
                                          "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"),
                       strict=True):
        assert torch.equal(opt.state[p]["momentum_buffer"], params[f"moments.{name}"])
    assert "state.0.momentum_buffer" in optimizer_from_mindspore(opt, params)
    # Continue training in torchresume (200 steps here; docs/benchmarks.md shows a full epoch 3
    # with `torchresume train --resume lenet-2_1875.ckpt --epochs 3 --lr 0.001`).
    from torch import nn

    from torchresume.app.mnist import create_dataset, default_mnist_dir
    before = {id(p): opt.state[p]["momentum_buffer"].clone() for p in net.parameters()}
    model = tr.Model(net, nn.CrossEntropyLoss(), opt, metrics={"acc", "loss"})
    model.train(1, create_dataset(default_mnist_dir(), True, 32, steps_per_epoch=200))
    assert all(not torch.equal(opt.state[p]["momentum_buffer"], before[id(p)])
               for p in net.parameters())
    assert model.eval(create_dataset(default_mnist_dir(), False, 32))["acc"] > 0.98
