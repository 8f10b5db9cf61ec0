"""torchresume.files: write, read, describe and verify one checkpoint (file or directory)."""

from __future__ import annotations

import os

import pytest
import torch

from torchresume import files
from torchresume.errors import CorruptCheckpointError, DecryptionError
from torchresume.format import crypto

KEY = bytes(range(24))


def _tree() -> dict:
    return {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4),
            "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 0.5}]},
            "ids": torch.arange(40, dtype=torch.int64), "name": "run"}


def _same(a, b) -> None:
    assert torch.equal(a["w"], b["w"]) and torch.equal(a["ids"], b["ids"])
    assert torch.equal(a["optimizer"]["state"][0]["step"], b["optimizer"]["state"][0]["step"])
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert a["name"] == b["name"]


def test_round_trip(tmp_path) -> None:
    path = str(tmp_path / "a.ckpt")
    n = files.write_checkpoint(path, "train_state", _tree(), info={"epoch": 2},
                               append={"note": "hi"})
    assert n == os.path.getsize(path)
    assert not os.stat(path).st_mode & 0o222  # committed files are read-only
    ckpt = files.read_checkpoint(path)
    assert (ckpt.kind, ckpt.format, ckpt.encrypted) == ("train_state", "torchresume", False)
    assert ckpt.info == {"epoch": 2} and ckpt.append == {"note": "hi"}
    _same(ckpt.tree, _tree())
    d = files.describe(path)
    assert (d.format, d.kind, d.size, d.info, d.append) == (
        "torchresume", "train_state", n, {"epoch": 2}, {"note": "hi"})
    assert {r["name"] for r in d.tensors} == {"w", "ids", "optimizer.state.0.step"}
    assert d.values == {"optimizer.param_groups.0.lr": 0.5, "name": "run"}
    assert files.verify(path) == files.Verdict(path, True, "")


def test_encode_state_size_matches_the_written_file(tmp_path) -> None:
    enc = files.encode_state("model", {"w": torch.ones(5)})
    path = str(tmp_path / "m.ckpt")
    assert files.write_encoded(enc, path, None) == enc.size == os.path.getsize(path)


def test_encrypted_round_trip(tmp_path) -> None:
    path = str(tmp_path / "e.ckpt")
    n = files.write_checkpoint(path, "train_state", _tree(), enc_key=KEY)
    assert n == os.path.getsize(path)
    ckpt = files.read_checkpoint(path, dec_key=KEY)
    assert ckpt.encrypted and ckpt.kind == "train_state"
    _same(ckpt.tree, _tree())
    d = files.describe(path)
    assert d.encrypted and d.format == "encrypted" and d.kind == "encrypted"
    assert files.verify(path, dec_key=KEY).valid
    v = files.verify(path)
    assert not v.valid
    assert v.reason == (f"{path}: the checkpoint is encrypted (AES-GCM); pass dec_key=<the key "
                        "used to save it>")
    with pytest.raises(DecryptionError, match="decryption failed: the key is wrong"):
        files.read_checkpoint(path, dec_key=bytes(24))


def test_multi_frame_encryption(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(crypto, "CHUNK", 64)
    path = str(tmp_path / "e.ckpt")
    tree = _tree()
    enc = files.encode_state("train_state", tree)
    frames = -(-enc.size // 64)
    assert frames > 5
    n = files.write_checkpoint(path, "train_state", tree, enc_key=KEY)
    with open(path, "rb") as f:
        header = crypto.parse_header(f.read(4096), path)
    assert header["chunk"] == 64 and header["plain_size"] == enc.size
    assert n == header["header_size"] + enc.size + frames * crypto.TAG == os.path.getsize(path)
    _same(files.read_checkpoint(path, dec_key=KEY).tree, tree)

    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.truncate(n - 64 - crypto.TAG)  # drop the last whole frames' worth of bytes
    with pytest.raises(CorruptCheckpointError) as err:
        files.read_checkpoint(path, dec_key=KEY)
    assert str(err.value) == (f"{path}: encrypted file is {n - 64 - crypto.TAG} bytes, expected "
                              f"{n}; it is truncated or damaged")
    assert not files.verify(path, dec_key=KEY).valid


def test_multi_frame_tampering_is_detected(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(crypto, "CHUNK", 64)
    path = str(tmp_path / "e.ckpt")
    n = files.write_checkpoint(path, "train_state", _tree(), enc_key=KEY)
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(n - 100)
        b = f.read(1)
        f.seek(n - 100)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(DecryptionError) as err:
        files.read_checkpoint(path, dec_key=KEY)
    assert str(err.value) == (f"{path}: decryption failed: the key is wrong or the file was "
                              "modified")


def test_verify_reports_damage_and_never_raises(tmp_path) -> None:
    path = str(tmp_path / "a.ckpt")
    files.write_checkpoint(path, "model", {"w": torch.ones(4)})
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        f.write(b"\x07")
    v = files.verify(path)
    assert v == files.Verdict(path, False, f"{path}: checksum mismatch in tensor 'w'; the data is "
                                           "damaged (bit flip or partial write)")
    missing = files.verify(str(tmp_path / "none.ckpt"))
    assert not missing.valid and missing.reason


def test_read_checkpoint_argument_checks(tmp_path) -> None:
    with pytest.raises(TypeError) as err:
        files.read_checkpoint("")
    assert str(err.value) == "ckpt_file_name must be a non-empty str, got ''"
    with pytest.raises(ValueError, match=r"dec_mode='AES-XTS' is not supported"):
        files.read_checkpoint(str(tmp_path / "x.ckpt"), dec_key=KEY, dec_mode="AES-XTS")
    with pytest.raises(TypeError, match="dec_key must be bytes of length 16, 24 or 32, got a str"):
        files.read_checkpoint(str(tmp_path / "x.ckpt"), dec_key="secret")


def test_directory_checkpoint_round_trip(tmp_path) -> None:
    d = str(tmp_path / "ckpt-1_1.ckpt")
    p0 = files.write_part(d, "rank0", "train_state", {"w": torch.ones(3)})
    p1 = files.write_part(d, "rank1", "train_state", {"v": torch.zeros(2), "lr": 0.1})
    assert p0.file == "rank0.safetensors" and p0.size == os.path.getsize(os.path.join(d, p0.file))
    with pytest.raises(FileNotFoundError, match="a directory without a committed manifest.json"):
        files.read_checkpoint(d)
    files.commit_directory(d, [p0, p1], info={"epoch": 1}, append={"a": 1})
    ckpt = files.read_checkpoint(d)
    assert ckpt.format == "torchresume-directory" and ckpt.kind == "train_state"
    assert torch.equal(ckpt.tree["w"], torch.ones(3)) and ckpt.tree["lr"] == 0.1
    assert ckpt.info["epoch"] == 1 and ckpt.append == {"a": 1}
    desc = files.describe(d)
    assert desc.files == ["rank0.safetensors", "rank1.safetensors"]
    assert desc.size == p0.size + p1.size
    assert desc.values == {"lr": 0.1}
    assert files.verify(d).valid


def test_directory_parts_must_not_clash_or_repeat(tmp_path) -> None:
    d = str(tmp_path / "c.ckpt")
    p0 = files.write_part(d, "a", "model", {"w": torch.ones(1)})
    p1 = files.write_part(d, "b", "model", {"w": torch.ones(1)})
    with pytest.raises(ValueError, match="a directory checkpoint needs at least one part"):
        files.commit_directory(d, [])
    with pytest.raises(ValueError, match="duplicate part files"):
        files.commit_directory(d, [p0, p0])
    with pytest.raises(ValueError, match="part name must be a non-empty file name without '/'"):
        files.write_part(d, "x/y", "model", {"w": torch.ones(1)})
    files.commit_directory(d, [p0, p1])
    with pytest.raises(CorruptCheckpointError) as err:
        files.read_checkpoint(d)
    assert str(err.value) == f"{d}: parts hold the same keys ['w']"


def test_directory_part_replaced_is_detected(tmp_path) -> None:
    d = str(tmp_path / "c.ckpt")
    p0 = files.write_part(d, "a", "model", {"w": torch.ones(2)})
    files.commit_directory(d, [p0])
    target = os.path.join(d, p0.file)
    os.chmod(target, 0o644)
    os.remove(target)
    files.write_part(d, "a", "model", {"w": torch.full((2,), 2.0)})  # same size, other header
    with pytest.raises(CorruptCheckpointError, match="header differs from the one the manifest recorded"):
        files.read_checkpoint(d)
