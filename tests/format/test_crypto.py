from __future__ import annotations

import os
import re

import pytest
import torch

import torchresume as tr
from torchresume.cli.main import main
from torchresume.format import crypto

KEY = bytes(range(16))


def test_encrypted_round_trip(tmp_path, net) -> None:
    path = str(tmp_path / "e.ckpt")
    tr.save_checkpoint(net, path, enc_key=KEY)
    with open(path, "rb") as f:
        assert f.read(8) == b"TRCRYPT1"
    d = tr.load_checkpoint(path, dec_key=KEY)
    assert torch.equal(d["fc1.weight"], net.fc1.weight)


def test_multi_frame_round_trip(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(crypto, "CHUNK", 1000)
    path = str(tmp_path / "e.ckpt")
    data = {"w": torch.randn(2000)}
    tr.save_checkpoint(data, path, enc_key=KEY * 2)
    assert torch.equal(tr.load_checkpoint(path, dec_key=KEY * 2)["w"], data["w"])


def test_wrong_key(tmp_path, net) -> None:
    path = str(tmp_path / "e.ckpt")
    tr.save_checkpoint(net, path, enc_key=KEY)
    with pytest.raises(tr.DecryptionError, match="decryption failed: the key is wrong or the file was modified"):
        tr.load_checkpoint(path, dec_key=bytes(16))


def test_missing_key(tmp_path, net) -> None:
    path = str(tmp_path / "e.ckpt")
    tr.save_checkpoint(net, path, enc_key=KEY)
    with pytest.raises(tr.DecryptionError, match=r"the checkpoint is encrypted \(AES-GCM\); pass dec_key="):
        tr.load_checkpoint(path)


def test_tampered_ciphertext(tmp_path, net) -> None:
    path = str(tmp_path / "e.ckpt")
    tr.save_checkpoint(net, path, enc_key=KEY)
    data = bytearray(open(path, "rb").read())
    data[-20] ^= 0x80
    os.chmod(path, 0o600)
    open(path, "wb").write(bytes(data))
    with pytest.raises(tr.DecryptionError, match="the key is wrong or the file was modified"):
        tr.load_checkpoint(path, dec_key=KEY)


def test_truncated_ciphertext(tmp_path, net) -> None:
    path = str(tmp_path / "e.ckpt")
    tr.save_checkpoint(net, path, enc_key=KEY)
    data = open(path, "rb").read()
    cut = str(tmp_path / "cut.ckpt")
    open(cut, "wb").write(data[:-16])
    with pytest.raises(tr.CorruptCheckpointError, match="it is truncated or damaged"):
        tr.load_checkpoint(cut, dec_key=KEY)


@pytest.mark.parametrize(("key", "mode", "error", "message"), [
    (b"short", "AES-GCM", ValueError, "enc_key must be bytes of length 16, 24 or 32, got 5"),
    ("a" * 16, "AES-GCM", TypeError, "enc_key must be bytes of length 16, 24 or 32, got a str"),
    (KEY, "AES-CBC", ValueError, "enc_mode='AES-CBC' is not supported; use 'AES-GCM'"),
])
def test_bad_keys(tmp_path, net, key, mode, error, message) -> None:
    with pytest.raises(error) as exc:
        tr.save_checkpoint(net, str(tmp_path / "x.ckpt"), enc_key=key, enc_mode=mode)
    assert message in str(exc.value)


def test_inspect_says_encrypted(tmp_path, net, capsys) -> None:
    path = str(tmp_path / "e.ckpt")
    tr.save_checkpoint(net, path, enc_key=KEY)
    assert main(["inspect", path]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^format: +encrypted  \(encrypted: pass --dec-key-hex to read it\)$", out, re.M)
    assert main(["verify", path]) == 1
    assert "the checkpoint is encrypted (AES-GCM); pass --dec-key-hex <the key, as hex>" in capsys.readouterr().out
    assert main(["verify", path, "--dec-key-hex", KEY.hex()]) == 0
