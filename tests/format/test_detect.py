"""format/detect.py: the kind of a file from its first bytes and size, never its name."""

from __future__ import annotations

import io
import pickle
import struct

import pytest
import torch

from torchresume.format import crypto
from torchresume.format.detect import HEAD_BYTES, Kind, detect


def _head(data: bytes) -> Kind:
    return detect(data[:HEAD_BYTES], len(data))


def test_empty() -> None:
    assert _head(b"") is Kind.EMPTY
    assert detect(b"", 0) is Kind.EMPTY


def test_tiny() -> None:
    assert _head(b"abc") is Kind.TINY
    assert _head(b"12345678") is Kind.TINY


def test_encrypted_magic() -> None:
    assert _head(crypto.MAGIC + b"\x10\x00\x00\x00{") is Kind.ENCRYPTED
    data = b"".join(crypto.encrypt(b"hello", bytes(16)))
    assert _head(data) is Kind.ENCRYPTED


def test_torch_zip() -> None:
    buf = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buf)
    assert _head(buf.getvalue()) is Kind.TORCH_ZIP


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_pickle(protocol: int) -> None:
    assert _head(pickle.dumps({"a": 1}, protocol=protocol)) is Kind.TORCH_PICKLE


def test_legacy_torch_save_is_pickle() -> None:
    buf = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buf, _use_new_zipfile_serialization=False)
    assert _head(buf.getvalue()) is Kind.TORCH_PICKLE


def test_safetensors() -> None:
    from safetensors.torch import save
    assert _head(save({"w": torch.ones(2)})) is Kind.SAFETENSORS
    assert _head(struct.pack("<Q", 2) + b"{}") is Kind.SAFETENSORS


def test_unknown() -> None:
    assert _head(b"hello world, not a checkpoint") is Kind.UNKNOWN
    assert _head(b"\x80\x09" + b"\0" * 20) is Kind.UNKNOWN  # pickle opcode with a bad protocol


def test_kind_values_are_the_format_names() -> None:
    assert Kind.TORCH_ZIP.value == "torch-zip"
    assert Kind.TORCH_PICKLE.value == "torch-pickle"
    assert Kind("safetensors") is Kind.SAFETENSORS


def test_safetensors_whose_header_length_starts_like_a_pickle() -> None:
    # A 640-byte header (0x280) makes the file start 80 02, the opening of pickle protocol 2.
    header = b"{" + b" " * 638 + b"}"
    first = struct.pack("<Q", len(header)) + header[:1]
    assert first[:2] == b"\x80\x02"
    assert detect(first, 8 + len(header)) is Kind.SAFETENSORS
    assert detect(pickle.dumps({"a": 1}, protocol=2)[:HEAD_BYTES], 100) is Kind.TORCH_PICKLE


def test_native_file_with_a_0x280_header_reads_back(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from torchresume.files import read_checkpoint, write_checkpoint
    for n in range(1, 200):  # find a tree whose header is exactly 640 bytes
        tree = {"w" * n: torch.ones(2)}
        path = str(tmp_path / f"t{n}.ckpt")
        write_checkpoint(path, "tensors", tree)
        with open(path, "rb") as f:
            if struct.unpack("<Q", f.read(8))[0] == 0x280:
                break
    else:
        pytest.skip("no tree with a 640-byte header in range")
    assert torch.equal(read_checkpoint(path).tree["w" * n], torch.ones(2))
