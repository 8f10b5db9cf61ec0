"""Hostile headers (issue 35 item 3): each is a typed error naming the fault, found at bounded cost."""

from __future__ import annotations

import io
import json
import logging
import struct

import pytest
import torch

from torchresume.errors import CorruptCheckpointError
from torchresume.format import crypto, mindspore, mindspore_load, native, reader


def _file(header: bytes | str, data: bytes = b"") -> bytes:
    raw = header.encode() if isinstance(header, str) else header
    raw += b" " * (-(len(raw) + 8) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


def _fails(data: bytes) -> str:
    with pytest.raises(CorruptCheckpointError) as err:
        reader.read(io.BytesIO(data), len(data), "x.ckpt")
    assert err.type is CorruptCheckpointError
    return str(err.value)


def _native(tensors: dict[str, torch.Tensor]) -> bytes:
    enc = native.encode({k: native.prepare(v, k) for k, v in tensors.items()}, {"kind": "tensors", "skeleton": None})
    return b"".join(bytes(p) for p in enc.parts())


def test_header_of_100k_nested_brackets_is_typed() -> None:
    message = _fails(_file('{"a":' + "[" * 100_000 + "]" * 100_000 + "}"))
    assert message == ("x.ckpt: header holds 100001 JSON objects and lists in 200008 bytes, more than a checkpoint "
                       "header has; the file is damaged or hostile")


def test_deeply_nested_header_is_typed() -> None:
    depth = 5000  # within the container bound thanks to the padding: json itself gives up
    message = _fails(_file('{"a":' + "[" * depth + "]" * depth + ', "pad": "' + "x" * 16 * depth + '"}'))
    assert message == "x.ckpt: header nests JSON too deeply; the file is damaged or hostile"


def test_number_too_long_for_python_is_typed() -> None:
    message = _fails(_file('{"a":{"dtype":"U8","shape":[1' + "0" * 5000 + '],"data_offsets":[0,0]}}'))
    assert message.startswith("x.ckpt: header holds a value JSON cannot be read as (Exceeds the limit (4300 digits)")


@pytest.mark.parametrize("shape", [[0, 2**63], [0, 2**62, 2**62], [2**63 - 1, 0, 2]])
def test_shape_beyond_int64_is_typed(shape: list[int]) -> None:
    message = _fails(_file(json.dumps({"a": {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}})))
    assert message == f"x.ckpt: tensor 'a' has shape {shape}, larger than a tensor can be; the header is damaged"


def test_empty_shape_with_a_huge_dimension_still_loads() -> None:
    got = reader.read(io.BytesIO(data := _file(json.dumps(
        {"a": {"dtype": "F32", "shape": [0, 2**62], "data_offsets": [0, 0]}}))), len(data), "x.ckpt")
    assert got.tree["a"].shape == (0, 2**62)


def test_flipped_metadata_key_says_the_header_is_damaged() -> None:
    data = bytearray(_native({"w": torch.ones(3)}))
    at = data.index(b"__metadata__") + 10
    data[at] ^= 0x19  # "__metadata__" -> "__metadataF_"
    assert _fails(bytes(data)) == ("x.ckpt: header entry '__metadataF_' is not a tensor (it has no dtype or "
                                   "data_offsets); the header is damaged")


def test_more_tensors_than_the_file_can_hold_is_refused_before_loading() -> None:
    n = native.SMALL_FILE_TENSORS + 1000
    entries = ",".join(f'"t{i}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}' for i in range(n))
    data = _file("{" + entries + "}")
    assert _fails(data) == (f"x.ckpt: header lists {n} tensors, more than a file of {len(data)} bytes holds "
                            "(one per 128 bytes); the file is damaged or hostile")


def test_tensors_hidden_from_the_quick_count_are_counted_after_parsing() -> None:
    n = native.SMALL_FILE_TENSORS + 1000
    entries = ",".join(f'"t{i}":{{"d\\u0074ype":"F32","shape":[0],"data_offsets":[0,0]}}' for i in range(n))
    data = _file("{" + entries + "}")
    assert b'"dtype"' not in data
    assert _fails(data) == (f"x.ckpt: header lists {n} tensors, more than a file of {len(data)} bytes holds "
                            "(one per 128 bytes); the file is damaged or hostile")


def test_many_small_tensors_within_the_bound_load() -> None:
    tensors = {f"layer.{i}.bias": torch.full((2,), float(i)) for i in range(3000)}
    data = _native(tensors)
    f = io.BytesIO(data)
    got = native.read_tensors(f, native.read_header(f, len(data), "x.ckpt"), "x.ckpt")
    assert all(torch.equal(got[k], v) for k, v in tensors.items())


def test_dense_json_containers_are_refused_before_parsing() -> None:
    data = _file('{"a":[' + ",".join(["[]"] * 10_000) + "]}")
    assert _fails(data).endswith("more than a checkpoint header has; the file is damaged or hostile")


def _forged(mutate: object) -> bytes:
    """A native file whose torchresume metadata was changed and its header check recomputed (xxh3 is unkeyed)."""
    data = _native({"w": torch.ones(3)})
    (n,) = struct.unpack("<Q", data[:8])
    doc = json.loads(data[8:8 + n])
    meta = json.loads(doc["__metadata__"]["torchresume"])
    mutate(meta)  # type: ignore[operator]
    doc["__metadata__"]["torchresume"] = json.dumps(meta)
    index = {k: v for k, v in doc.items() if k != "__metadata__"}
    doc["__metadata__"]["torchresume_check"] = native._header_check(index, doc["__metadata__"]["torchresume"])
    return _file(json.dumps(doc), data[8 + n:])


def test_forged_metadata_of_the_wrong_types_is_typed() -> None:
    assert _fails(_forged(lambda m: m.update(checksums=[1]))) == "x.ckpt: checksum table does not match the tensors"
    assert _fails(_forged(lambda m: m.update(info="x"))) == (
        "x.ckpt: torchresume metadata's 'info' is not an object; the header is damaged")
    assert _fails(_forged(lambda m: m.update(kind=["x"]))) == "x.ckpt: torchresume metadata is malformed"


def test_encrypted_envelope_with_a_short_nonce_is_typed() -> None:
    head = json.dumps({"mode": "AES-GCM", "chunk": 16, "nonce": "", "plain_size": 0}).encode()
    data = crypto.MAGIC + struct.pack("<I", len(head)) + head + bytes(16)
    with pytest.raises(CorruptCheckpointError) as err:
        reader.read(io.BytesIO(data), len(data), "x.ckpt", dec_key=bytes(16))
    assert str(err.value) == "x.ckpt: encrypted file has a damaged header"


# -- MindSpore ---------------------------------------------------------------------------------------

def _ms(entries: dict, crc: bool = False) -> bytes:
    return b"".join(bytes(p) for p in mindspore.encode(entries, crc_check=crc))


def _ms_fails(data: bytes) -> str:
    with pytest.raises(CorruptCheckpointError) as err:
        mindspore.read(io.BytesIO(data), len(data), "x.ckpt")
    return str(err.value)


def test_mindspore_file_of_too_many_tiny_entries_is_refused_as_read() -> None:
    n = mindspore.SMALL_FILE_ENTRIES + 2000
    data = _ms({f"t{i}": torch.tensor([1], dtype=torch.int8) for i in range(n)})
    limit = mindspore.SMALL_FILE_ENTRIES + len(data) // 128
    assert _ms_fails(data) == (f"x.ckpt: more than {limit} entries in {len(data)} bytes, more than a MindSpore "
                               "checkpoint of this size holds (one per 128 bytes); the file is damaged or hostile")


@pytest.mark.parametrize("dims", [[0, 2**63 - 1, 2], [1] * 65])
def test_mindspore_shape_beyond_int64_is_typed(dims: list[int]) -> None:
    parts = mindspore._value_parts("a", "Float32", dims, memoryview(b""))
    shown = dims if len(dims) <= 8 else f"{len(dims)} dims"
    assert _ms_fails(b"".join(bytes(p) for p in parts)) == (
        f"x.ckpt: the tensor 'a' has shape {shown}, larger than a tensor can be; the file is damaged")


def test_mindspore_without_crc_warns_that_nothing_protects_it(caplog: pytest.LogCaptureFixture) -> None:
    data = _ms({"w": torch.ones(2)})
    with caplog.at_level(logging.WARNING, logger="torchresume"):
        entries, _ = mindspore_load.load(io.BytesIO(data), len(data), "x.ckpt", dec_key=None)
    assert torch.equal(entries["w"], torch.ones(2))
    assert [r.getMessage() for r in caplog.records] == [
        "x.ckpt: a MindSpore checkpoint without a CRC footer: nothing protects it, a damaged byte would load "
        "unnoticed (save it with crc_check=True)"]


def test_mindspore_with_crc_loads_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    data = _ms({"w": torch.ones(2)}, crc=True)
    with caplog.at_level(logging.WARNING, logger="torchresume"):
        mindspore_load.load(io.BytesIO(data), len(data), "x.ckpt", dec_key=None)
    assert caplog.records == []
