"""inspect / verify / diff / ls, run as a user runs them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import torch

import torchresume as tr
from torchresume.cli.main import main


def _save(path, net, **info) -> str:
    tr.save_checkpoint(net, str(path), append_dict=info or None)
    return str(path)


def test_inspect_text_and_json(tmp_path, net, capsys) -> None:
    path = _save(tmp_path / "m.ckpt", net, epoch_num=2)
    assert main(["inspect", path]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^kind: +model$", out, re.M) and "fc1.weight" in out and "[8, 4]" in out
    assert main(["inspect", path, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["kind"] == "model" and doc["append"] == {"epoch_num": 2}
    assert {"name": "fc2.bias", "dtype": "float32", "shape": [3], "bytes": 12} in doc["tensors"]


def test_verify_file_and_directory(tmp_path, net, capsys) -> None:
    good = _save(tmp_path / "good.ckpt", net)
    bad = tmp_path / "bad.ckpt"
    data = bytearray(open(good, "rb").read())
    data[-1] ^= 0xFF
    bad.write_bytes(bytes(data))
    assert main(["verify", good]) == 0
    assert main(["verify", str(bad)]) == 1
    assert "checksum mismatch in tensor" in capsys.readouterr().out
    assert main(["verify", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"OK       {good}" in out and "INVALID" in out


def test_diff(tmp_path, net, capsys) -> None:
    a = _save(tmp_path / "a.ckpt", net)
    with torch.no_grad():
        net.fc1.weight[0, 0] += 0.5
    b = str(tmp_path / "b.ckpt")
    tr.save_checkpoint({**net.state_dict(), "extra": torch.ones(1)}, b)
    assert main(["diff", a, b]) == 1  # they differ, as diff and cmp say
    out = capsys.readouterr().out.splitlines()
    assert "+ extra" in out
    assert any(line.startswith("~ fc1.weight  max|a-b|=0.5") for line in out)
    assert main(["diff", a, a]) == 0
    assert "identical" in capsys.readouterr().out


def test_ls_orders_valid_newest_first_and_flags_invalid(tmp_path, net, capsys) -> None:
    for epoch in (1, 2, 3):
        _save(tmp_path / f"lenet-{epoch}_10.ckpt", net)
    (tmp_path / "lenet-4_10.ckpt").write_bytes(b"")
    assert main(["ls", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines[1:]]
    # valid ones newest first, then the invalid one (never resumed from), however new
    assert names == ["lenet-3_10.ckpt", "lenet-2_10.ckpt", "lenet-1_10.ckpt", "lenet-4_10.ckpt"]
    assert "INVALID" in lines[4] and "empty" in lines[4]


def test_errors_are_one_line_without_traceback(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-m", "torchresume", "inspect",
                           str(tmp_path / "none.ckpt")], capture_output=True, text=True, env=env)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"torchresume: error: {tmp_path / 'none.ckpt'}: no such checkpoint file"
    proc = subprocess.run([sys.executable, "-m", "torchresume", "bogus"], capture_output=True,
                          text=True, env=env)
    assert proc.returncode == 2


def test_convert_torch_file_to_native_and_encrypted(tmp_path, net, capsys) -> None:
    pt, native, enc = str(tmp_path / "w.pth"), str(tmp_path / "w.ckpt"), str(tmp_path / "e.ckpt")
    torch.save(net.state_dict(), pt)
    assert main(["convert", pt, native]) == 0
    assert f"wrote {native} (state, from torch-zip)" in capsys.readouterr().out
    from safetensors import safe_open
    with safe_open(native, "pt") as f:
        assert torch.equal(f.get_tensor("fc1.weight"), net.fc1.weight.detach())
    key = "00" * 16
    assert main(["convert", native, enc, "--enc-key-hex", key]) == 0
    assert main(["verify", enc, "--dec-key-hex", key]) == 0
    d = tr.load_checkpoint(enc, dec_key=bytes(16))
    assert torch.equal(d["fc2.bias"], net.fc2.bias)
