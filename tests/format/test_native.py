"""format/native.py: encode, read_header and read_tensors on in-memory files."""

from __future__ import annotations

import io
import json
import struct

import pytest
import torch

from torchresume.errors import CorruptCheckpointError
from torchresume.format import native
from torchresume.format.dtypes import TO_SAFETENSORS


def _all_dtypes() -> dict[str, torch.Tensor]:
    out = {}
    for i, dtype in enumerate(TO_SAFETENSORS):
        base = torch.arange(i, i + 6, dtype=torch.float32).reshape(2, 3)
        if dtype == torch.bool:
            out[f"t_{i}"] = base.remainder(2).to(torch.bool)
        else:
            out[f"t_{i}"] = base.to(dtype)
    out["empty"] = torch.empty(0, 4, dtype=torch.float32)
    out["scalar"] = torch.tensor(3.5, dtype=torch.float64)
    return out


_DEFAULT = {"kind": "tensors"}


def _bytes(tensors: dict[str, torch.Tensor], meta: dict | None = _DEFAULT) -> bytes:
    enc = native.encode({k: native.prepare(v, k) for k, v in tensors.items()}, meta)
    return b"".join(bytes(p) for p in enc.parts())


def _read(data: bytes, verify: bool = True) -> tuple[native.Header, dict[str, torch.Tensor]]:
    f = io.BytesIO(data)
    header = native.read_header(f, len(data), "x.ckpt")
    return header, native.read_tensors(f, header, "x.ckpt", verify=verify)


def test_round_trip_of_every_dtype() -> None:
    tensors = _all_dtypes()
    header, back = _read(_bytes(tensors))
    assert header.kind == "tensors"
    assert set(back) == set(tensors)
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype, name
        assert back[name].shape == t.shape, name
        assert torch.equal(back[name].reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8)), name


def test_encoded_size_and_header_padding() -> None:
    enc = native.encode({"a": torch.ones(3)}, {"kind": "tensors"})
    data = b"".join(bytes(p) for p in enc.parts())
    assert enc.size == len(data)
    (n,) = struct.unpack("<Q", data[:8])
    assert (8 + n) % 8 == 0
    assert data[8:9] == b"{"


def test_every_tensor_is_aligned_to_its_itemsize() -> None:
    tensors = {"u8": torch.ones(3, dtype=torch.uint8), "f64": torch.ones(5, dtype=torch.float64),
               "f16": torch.ones(7, dtype=torch.float16), "i32": torch.ones(1, dtype=torch.int32)}
    header, _ = _read(_bytes(tensors))
    assert header.data_start % 8 == 0
    for e in header.entries:
        assert e.begin % e.dtype.itemsize == 0, e.name
    # largest element size first
    order = [e.name for e in sorted(header.entries, key=lambda e: e.begin)]
    assert order == ["f64", "i32", "f16", "u8"]


def test_plain_safetensors_has_no_meta() -> None:
    header, back = _read(_bytes({"a": torch.ones(2)}, meta=None))
    assert header.meta is None
    assert header.kind == "safetensors"
    assert torch.equal(back["a"], torch.ones(2))


def test_meta_holds_version_kind_and_checksums() -> None:
    header, _ = _read(_bytes({"a": torch.ones(2)}, meta={"kind": "model", "info": {"epoch": 3}}))
    assert header.meta["format"] == "torchresume"
    assert header.meta["version"] == native.FORMAT_VERSION
    assert header.meta["kind"] == "model"
    assert header.meta["info"] == {"epoch": 3}
    assert header.meta["checksums"]["algorithm"] == "xxh3_64"
    assert set(header.meta["checksums"]["tensors"]) == {"a"}


def test_header_checksum_detects_a_flipped_metadata_byte() -> None:
    data = bytearray(_bytes({"a": torch.ones(2)}, meta={"kind": "model", "info": {"epoch": 3}}))
    pos = data.index(b'\\"epoch\\":3') + len(b'\\"epoch\\":')
    data[pos:pos + 1] = b"4"  # still valid JSON, different value
    with pytest.raises(CorruptCheckpointError) as err:
        _read(bytes(data))
    assert str(err.value) == ("x.ckpt: header checksum mismatch; the header was modified or "
                              "damaged")


def test_tensor_checksum_detects_a_flipped_data_byte() -> None:
    data = bytearray(_bytes({"w": torch.arange(8, dtype=torch.float32)}))
    data[-1] ^= 0x01
    with pytest.raises(CorruptCheckpointError, match=r"checksum mismatch in tensor 'w'"):
        _read(bytes(data))
    _, back = _read(bytes(data), verify=False)  # verify=False skips the check
    assert back["w"].shape == (8,)


def test_trailing_bytes_are_rejected() -> None:
    data = _bytes({"a": torch.ones(2)}) + b"xyz"
    with pytest.raises(CorruptCheckpointError) as err:
        _read(data)
    assert str(err.value) == "x.ckpt: 3 unexpected trailing bytes after the tensor data"


def _raw(header: dict, data: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def test_gap_between_tensors_is_rejected() -> None:
    header = {"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
              "b": {"dtype": "U8", "shape": [2], "data_offsets": [3, 5]}}
    with pytest.raises(CorruptCheckpointError) as err:
        _read(_raw(header, b"\0" * 5))
    assert str(err.value) == ("x.ckpt: tensor 'b' starts at byte 3 but the previous data ends "
                              "at 2 (overlap or gap)")


def test_overlap_is_rejected() -> None:
    header = {"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
              "b": {"dtype": "U8", "shape": [2], "data_offsets": [1, 3]}}
    with pytest.raises(CorruptCheckpointError, match="starts at byte 1 but the previous data ends at 2"):
        _read(_raw(header, b"\0" * 3))


def test_data_shorter_than_offsets_is_truncation() -> None:
    header = {"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}
    with pytest.raises(CorruptCheckpointError) as err:
        _read(_raw(header, b"\0" * 2))
    assert str(err.value) == "x.ckpt: truncated: tensor data needs 4 bytes but the file holds 2"


def test_shape_and_offsets_must_agree() -> None:
    header = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}
    with pytest.raises(CorruptCheckpointError) as err:
        _read(_raw(header, b"\0" * 4))
    assert str(err.value) == "x.ckpt: tensor 'a' shape [2] needs 8 bytes but its offsets span 4"


def test_unknown_dtype_and_malformed_entry() -> None:
    with pytest.raises(CorruptCheckpointError) as err:
        _read(_raw({"a": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8))
    assert str(err.value) == "x.ckpt: tensor 'a' has unknown dtype 'C64'"
    with pytest.raises(CorruptCheckpointError) as err:
        _read(_raw({"a": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 1]}}, b"\0"))
    assert str(err.value) == "x.ckpt: tensor 'a' has a malformed header entry"


def test_short_and_oversized_headers() -> None:
    with pytest.raises(CorruptCheckpointError) as err:
        _read(b"\x01\x02")
    assert str(err.value) == ("x.ckpt: truncated: the file has 2 bytes, too few for a "
                              "checkpoint header")
    with pytest.raises(CorruptCheckpointError) as err:
        _read(struct.pack("<Q", 50) + b"{}")
    assert str(err.value) == "x.ckpt: truncated: header claims 50 bytes but the file has only 10"
    huge = native.MAX_HEADER_BYTES + 1
    with pytest.raises(CorruptCheckpointError) as err:
        _read(struct.pack("<Q", huge) + b"{}")
    assert str(err.value) == (f"x.ckpt: header claims {huge} bytes (limit "
                              f"{native.MAX_HEADER_BYTES}); the file is damaged or not a checkpoint")


def test_header_must_be_a_json_object() -> None:
    with pytest.raises(CorruptCheckpointError) as err:
        _read(struct.pack("<Q", 2) + b"[]")
    assert str(err.value) == "x.ckpt: header is JSON but not an object"
    with pytest.raises(CorruptCheckpointError, match="header is not valid JSON"):
        _read(struct.pack("<Q", 2) + b"{x")


def test_newer_format_version_is_unsupported() -> None:
    from torchresume.errors import UnsupportedFormatError
    data = _bytes({"a": torch.ones(1)}, meta={"kind": "tensors"})
    (n,) = struct.unpack("<Q", data[:8])
    doc = json.loads(data[8:8 + n])
    meta = json.loads(doc["__metadata__"]["torchresume"])
    meta["version"] = native.FORMAT_VERSION + 1
    text = json.dumps(meta, separators=(",", ":"))
    index = {k: v for k, v in doc.items() if k != "__metadata__"}
    doc["__metadata__"]["torchresume"] = text
    doc["__metadata__"]["torchresume_check"] = native._header_check(index, text)
    with pytest.raises(UnsupportedFormatError) as err:
        _read(_raw(doc, data[8 + n:]))
    assert str(err.value) == (f"x.ckpt: written by format version {native.FORMAT_VERSION + 1}; "
                              f"this torchresume reads up to {native.FORMAT_VERSION}: upgrade "
                              "torchresume")


def test_prepare_rejects_complex_and_sparse() -> None:
    with pytest.raises(TypeError, match=r"tensor 'c' has dtype torch.complex64, which the checkpoint"):
        native.prepare(torch.zeros(2, dtype=torch.complex64), "c")
    with pytest.raises(TypeError) as err:
        native.prepare(torch.eye(2).to_sparse(), "s")
    assert str(err.value) == "tensor 's' is torch.sparse_coo; call .to_dense() before saving"


def test_prepare_makes_contiguous_detached_copies() -> None:
    t = torch.arange(6.0, requires_grad=True).reshape(2, 3).t()
    out = native.prepare(t, "t")
    assert out.is_contiguous() and not out.requires_grad
    assert torch.equal(out, t.detach())


def test_mapped_local_file_reads_the_same(tmp_path) -> None:
    data = _bytes({"a": torch.arange(5, dtype=torch.int64), "b": torch.ones(3, dtype=torch.bfloat16)})
    p = tmp_path / "x.ckpt"
    p.write_bytes(data)
    with open(p, "rb") as f:
        header = native.read_header(f, len(data), "x.ckpt")
        back = native.read_tensors(f, header, "x.ckpt")
    assert torch.equal(back["a"], torch.arange(5))
    assert torch.equal(back["b"], torch.ones(3, dtype=torch.bfloat16))


def test_a_file_of_only_empty_tensors(tmp_path) -> None:
    data = _bytes({"e": torch.empty(0, 3), "f": torch.empty(0, dtype=torch.int8)})
    header, back = _read(data)
    assert header.data_size == 0
    assert back["e"].shape == (0, 3) and back["f"].dtype == torch.int8
    p = tmp_path / "e.ckpt"
    p.write_bytes(data)
    with open(p, "rb") as f:
        h = native.read_header(f, len(data), "e")
        assert native.read_tensors(f, h, "e")["e"].shape == (0, 3)
