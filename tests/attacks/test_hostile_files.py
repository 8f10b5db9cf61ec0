"""Damaged, foreign and hostile files: each gives a typed error naming the file and fault."""

from __future__ import annotations

import json
import os
import pickle
import struct

import pytest
import torch

import torchresume as tr
from torchresume.errors import CorruptCheckpointError, UnsafeCheckpointError, UnsupportedFormatError


@pytest.fixture
def good(tmp_path, trained) -> str:
    net, opt = trained
    path = str(tmp_path / "good.ckpt")
    tr.save_checkpoint({**net.state_dict(), "optimizer": opt.state_dict()}, path)
    return path


def _write(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path


def _bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _load_fails(path: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as exc:
        tr.load_checkpoint(path)
    assert exc.type is error
    assert str(exc.value).startswith(path + ": ")
    assert message in str(exc.value)


def test_empty_file(tmp_path) -> None:
    _load_fails(_write(str(tmp_path / "e.ckpt"), b""), CorruptCheckpointError,
                "the file is empty (0 bytes)")


@pytest.mark.parametrize("keep", [3, 8, 100, -1, -17])
def test_truncated(tmp_path, good, keep) -> None:
    data = _bytes(good)
    bad = _write(str(tmp_path / "t.ckpt"), data[:keep])
    with pytest.raises(CorruptCheckpointError, match="truncated|not a checkpoint|header"):
        tr.load_checkpoint(bad)


def test_truncated_tail_names_the_missing_bytes(tmp_path, good) -> None:
    data = _bytes(good)
    _load_fails(_write(str(tmp_path / "t.ckpt"), data[:-10]), CorruptCheckpointError,
                "truncated: tensor data needs")


def test_bit_flip_in_data(tmp_path, good) -> None:
    data = bytearray(_bytes(good))
    data[-5] ^= 0x01
    _load_fails(_write(str(tmp_path / "f.ckpt"), bytes(data)), CorruptCheckpointError,
                "checksum mismatch in tensor")


def test_bit_flip_in_metadata_value(tmp_path, good) -> None:
    data = bytearray(_bytes(good))
    pos = data.index(b'\\"lr\\",0.01')  # the optimizer's lr inside the header
    data[pos + 10] = ord("7")
    _load_fails(_write(str(tmp_path / "m.ckpt"), bytes(data)), CorruptCheckpointError,
                "header checksum mismatch")


def test_zero_filled(tmp_path, good) -> None:
    size = os.path.getsize(good)
    _load_fails(_write(str(tmp_path / "z.ckpt"), b"\0" * size), UnsupportedFormatError,
                "not a checkpoint torchresume can read (starts with 0000000000000000)")


def test_foreign_file(tmp_path) -> None:
    _load_fails(_write(str(tmp_path / "r.ckpt"), b"# README\nhello world\n"),
                UnsupportedFormatError, "not a checkpoint torchresume can read")


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("touch /tmp/torchresume-pwned",))


def test_pickle_payload_is_refused_without_running(tmp_path) -> None:
    marker = "/tmp/torchresume-pwned"
    if os.path.exists(marker):
        os.remove(marker)
    path = _write(str(tmp_path / "evil.pt"), pickle.dumps({"w": _Evil()}, protocol=2))
    _load_fails(path, UnsafeCheckpointError, "refused: the file's pickle asks to run code")
    assert not os.path.exists(marker)


def test_torch_zip_with_pickle_payload_is_refused(tmp_path) -> None:
    path = str(tmp_path / "evil.pth")
    torch.save({"w": torch.ones(1), "x": _Evil()}, path)
    _load_fails(path, UnsafeCheckpointError, "refused")


def test_header_claiming_terabytes(tmp_path) -> None:
    data = struct.pack("<Q", 2**40) + b"{}" + b" " * 6
    _load_fails(_write(str(tmp_path / "h.ckpt"), data), CorruptCheckpointError,
                "header claims 1099511627776 bytes (limit 104857600)")


def test_header_longer_than_file(tmp_path) -> None:
    data = struct.pack("<Q", 5000) + b"{}" + b" " * 6
    _load_fails(_write(str(tmp_path / "h.ckpt"), data), CorruptCheckpointError,
                "truncated: header claims 5000 bytes but the file has only 16")


def _craft(entries: dict, data: bytes, meta: dict | None = None) -> bytes:
    doc = dict(entries)
    if meta is not None:
        doc["__metadata__"] = meta
    header = json.dumps(doc).encode()
    return struct.pack("<Q", len(header)) + header + data


def test_offsets_past_the_end(tmp_path) -> None:
    blob = _craft({"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}, b"\0" * 16)
    _load_fails(_write(str(tmp_path / "o.ckpt"), blob), CorruptCheckpointError,
                "truncated: tensor data needs 4000 bytes but the file holds 16")


def test_overlapping_offsets(tmp_path) -> None:
    blob = _craft({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                   "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12)
    _load_fails(_write(str(tmp_path / "o.ckpt"), blob), CorruptCheckpointError,
                "(overlap or gap)")


def test_shape_disagrees_with_offsets(tmp_path) -> None:
    blob = _craft({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8)
    _load_fails(_write(str(tmp_path / "s.ckpt"), blob), CorruptCheckpointError,
                "tensor 'a' shape [3] needs 12 bytes but its offsets span 8")


def test_unknown_dtype(tmp_path) -> None:
    blob = _craft({"a": {"dtype": "Q99", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4)
    _load_fails(_write(str(tmp_path / "d.ckpt"), blob), CorruptCheckpointError,
                "tensor 'a' has unknown dtype 'Q99'")


def test_header_not_json(tmp_path) -> None:
    blob = struct.pack("<Q", 8) + b"{not js}" + b""
    _load_fails(_write(str(tmp_path / "j.ckpt"), blob), CorruptCheckpointError,
                "header is not valid JSON")


def test_metadata_not_strings(tmp_path) -> None:
    blob = _craft({}, b"", meta={"torchresume": 5})
    _load_fails(_write(str(tmp_path / "m.ckpt"), blob), CorruptCheckpointError,
                "__metadata__ must map strings to strings")


def test_newer_format_version(tmp_path) -> None:
    from torchresume.format import native
    good = str(tmp_path / "f.ckpt")
    tr.save_checkpoint({"w": torch.ones(3), "v": torch.zeros(2)}, good)
    header = native.read_header(open(good, "rb"), os.path.getsize(good), good)
    assert header.meta is not None
    meta = dict(header.meta, version=99)
    text = json.dumps(meta)
    index = {e.name: {"dtype": "F32", "shape": e.shape, "data_offsets": [e.begin, e.end]}
             for e in header.entries if e.dtype == torch.float32}
    check = native._header_check(index, text)
    blob = _craft(index, _bytes(good)[header.data_start:],
                  {"format": "pt", "torchresume": text, "torchresume_check": check})
    _load_fails(_write(str(tmp_path / "v.ckpt"), blob), UnsupportedFormatError,
                "written by format version 99; this torchresume reads up to 1: upgrade torchresume")


def test_damaged_torch_zip(tmp_path, net) -> None:
    path = str(tmp_path / "w.pt")
    torch.save(net.state_dict(), path)
    data = _bytes(path)
    _load_fails(_write(str(tmp_path / "cut.pt"), data[: len(data) // 2]), CorruptCheckpointError,
                "damaged torch file")
