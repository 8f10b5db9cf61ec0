"""format/reader.py: one entry point reads native, safetensors and torch.save files by content."""

from __future__ import annotations

import io
import pickle
import struct

import pytest
import torch
import xxhash

from torchresume.errors import (
    CorruptCheckpointError,
    DecryptionError,
    UnsafeCheckpointError,
    UnsupportedFormatError,
)
from torchresume.files import encode_state
from torchresume.format import crypto, reader


def _native(tree, kind: str = "train_state", **kw) -> bytes:
    enc = encode_state(kind, tree, **kw)
    return b"".join(bytes(p) for p in enc.parts())


def _read(data: bytes, **kw) -> reader.Checkpoint:
    return reader.read(io.BytesIO(data), len(data), "f.ckpt", **kw)


def test_native_rebuilds_the_nested_tree() -> None:
    tree = {"w": torch.arange(4.0), "optimizer": {"state": {0: {"m": torch.ones(2)}},
                                                  "param_groups": [{"lr": 0.1, "params": [0]}]},
            "note": "hi"}
    ckpt = _read(_native(tree, info={"epoch": 2}, append={"tag": "x"}))
    assert ckpt.format == "torchresume"
    assert ckpt.kind == "train_state"
    assert ckpt.encrypted is False
    assert ckpt.info == {"epoch": 2}
    assert ckpt.append == {"tag": "x"}
    assert torch.equal(ckpt.tree["w"], torch.arange(4.0))
    assert torch.equal(ckpt.tree["optimizer"]["state"][0]["m"], torch.ones(2))
    assert ckpt.tree["optimizer"]["param_groups"][0]["lr"] == 0.1
    assert ckpt.tree["note"] == "hi"


def test_plain_safetensors_from_the_safetensors_package() -> None:
    from safetensors.torch import save
    data = save({"a": torch.arange(3, dtype=torch.int32), "b": torch.ones(2, 2)})
    ckpt = _read(data)
    assert ckpt.format == "safetensors"
    assert ckpt.kind == "tensors"
    assert ckpt.meta == {}
    assert torch.equal(ckpt.tree["a"], torch.arange(3, dtype=torch.int32))
    assert torch.equal(ckpt.tree["b"], torch.ones(2, 2))


def test_torch_save_zip() -> None:
    buf = io.BytesIO()
    torch.save({"w": torch.arange(3.0), "n": 5}, buf)
    ckpt = _read(buf.getvalue())
    assert ckpt.format == "torch-zip"
    assert ckpt.kind == "torch"
    assert torch.equal(ckpt.tree["w"], torch.arange(3.0))
    assert ckpt.tree["n"] == 5


def test_legacy_torch_save_pickle() -> None:
    buf = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buf, _use_new_zipfile_serialization=False)
    ckpt = _read(buf.getvalue())
    assert (ckpt.format, ckpt.kind) == ("torch-pickle", "torch")
    assert torch.equal(ckpt.tree["w"], torch.ones(2))


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_torch_file_with_code_is_refused() -> None:
    buf = io.BytesIO()
    torch.save({"x": _Evil()}, buf)
    with pytest.raises(UnsafeCheckpointError, match=r"^f\.ckpt: refused: the file's pickle asks to run code"):
        _read(buf.getvalue())


def test_raw_pickle_with_code_is_refused_or_corrupt() -> None:
    with pytest.raises(CorruptCheckpointError):
        _read(pickle.dumps(_Evil(), protocol=2))


def test_header_xxh3_match_and_mismatch() -> None:
    enc = encode_state("model", {"w": torch.ones(3)})
    data = b"".join(bytes(p) for p in enc.parts())
    good = xxhash.xxh3_64_hexdigest(enc.header)
    assert torch.equal(_read(data, header_xxh3=good).tree["w"], torch.ones(3))
    with pytest.raises(CorruptCheckpointError) as err:
        _read(data, header_xxh3="0" * 16)
    assert str(err.value) == ("f.ckpt: header differs from the one the manifest recorded; "
                              "the part was replaced or damaged")


def test_encrypted_needs_the_key_and_reports_encrypted() -> None:
    key = bytes(range(16))
    data = b"".join(crypto.encrypt(_native({"w": torch.ones(2)}), key))
    ckpt = _read(data, dec_key=key)
    assert ckpt.encrypted is True
    assert torch.equal(ckpt.tree["w"], torch.ones(2))
    with pytest.raises(DecryptionError) as err:
        _read(data)
    assert str(err.value) == ("f.ckpt: the checkpoint is encrypted (AES-GCM); pass "
                              "dec_key=<the key used to save it>")


def test_dec_key_on_a_plain_file_is_an_error() -> None:
    with pytest.raises(DecryptionError) as err:
        _read(_native({"w": torch.ones(2)}), dec_key=bytes(16))
    assert str(err.value) == "f.ckpt: dec_key was given but the file is not encrypted; drop dec_key"


def test_empty_tiny_and_unknown() -> None:
    with pytest.raises(CorruptCheckpointError) as err:
        _read(b"")
    assert str(err.value) == ("f.ckpt: the file is empty (0 bytes): a write was interrupted; "
                              "delete it and use an older checkpoint")
    with pytest.raises(CorruptCheckpointError) as err:
        _read(b"abc")
    assert str(err.value) == "f.ckpt: truncated: the file has only 3 bytes, too few for any checkpoint"
    data = b"GIF89a-not-a-checkpoint"
    with pytest.raises(UnsupportedFormatError) as err:
        _read(data)
    assert str(err.value) == (f"f.ckpt: not a checkpoint torchresume can read (starts with "
                              f"{data[:8].hex()}); expected a torchresume/safetensors file, a MindSpore "
                              ".ckpt or a torch.save .pt/.pth file")


def test_damaged_skeleton_is_corrupt() -> None:
    from torchresume.format import native
    tensors = {"w": torch.ones(2)}
    enc = native.encode(tensors, {"kind": "model", "skeleton": {"bogus": 1}})
    data = b"".join(bytes(p) for p in enc.parts())
    with pytest.raises(CorruptCheckpointError, match=r"^f\.ckpt: the state skeleton is damaged"):
        _read(data)


def test_read_header_for_each_format() -> None:
    data = _native({"w": torch.ones(2)}, kind="model")
    fmt, header, extra = reader.read_header(io.BytesIO(data), len(data), "f")
    assert fmt == "torchresume" and header is not None and header.kind == "model" and extra == {}

    from safetensors.torch import save
    st = save({"a": torch.ones(1)})
    fmt, header, _ = reader.read_header(io.BytesIO(st), len(st), "f")
    assert fmt == "safetensors" and header is not None and header.meta is None

    enc = b"".join(crypto.encrypt(data, bytes(16)))
    fmt, header, extra = reader.read_header(io.BytesIO(enc), len(enc), "f")
    assert (fmt, header) == ("encrypted", None)
    assert extra == {"encrypted": True, "mode": "AES-GCM", "plain_size": len(data)}

    buf = io.BytesIO()
    torch.save({"a": 1}, buf)
    fmt, header, extra = reader.read_header(io.BytesIO(buf.getvalue()), len(buf.getvalue()), "f")
    assert (fmt, header, extra) == ("torch-zip", None, {})

    junk = struct.pack("<Q", 0) + b"\xff" * 10
    with pytest.raises(UnsupportedFormatError, match="not a checkpoint torchresume can read"):
        reader.read_header(io.BytesIO(junk), len(junk), "f")
