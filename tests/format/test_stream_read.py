"""format/stream_read.py: one-pass verified reads, mapped (local files) and streamed (readinto).

Chunk size and hashing threads are shrunk so a few hundred KiB cross many chunk
boundaries: tensors split across chunks, slices hashed by different threads, and
empty tensors at the very end must all be checked, and damage anywhere must name
the damaged tensor.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from torchresume.errors import CorruptCheckpointError
from torchresume.format import native, stream_read

KIB = 1024


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch) -> None:
    monkeypatch.setattr(stream_read, "CHUNK_BYTES", 16 * KIB)
    monkeypatch.setattr(stream_read, "HASH_THREADS", 3)


def _state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        "big": torch.randn(40 * KIB),  # 160 KiB: ten chunks
        "odd": torch.arange(3001, dtype=torch.int16),  # crosses a chunk boundary mid-way
        "mid": torch.randn(7, 129),
        "bytes": torch.randint(0, 255, (50 * KIB + 3,), dtype=torch.uint8),
        "z_empty": torch.empty(0, dtype=torch.uint8),  # smallest element size: placed last
    }


def _blob(state: dict[str, torch.Tensor]) -> bytes:
    enc = native.encode({k: native.prepare(v, k) for k, v in state.items()}, {"kind": "tensors"})
    return b"".join(bytes(p) for p in enc.parts())


def _load(blob: bytes, tmp_path: Path, mapped: bool, verify: bool = True) -> dict[str, torch.Tensor]:
    if mapped:
        path = tmp_path / "s.ckpt"
        path.write_bytes(blob)
        with open(path, "rb") as f:
            header = native.read_header(f, len(blob), "s.ckpt")
            return native.read_tensors(f, header, "s.ckpt", verify=verify)
    f2 = io.BytesIO(blob)
    header = native.read_header(f2, len(blob), "s.ckpt")
    return native.read_tensors(f2, header, "s.ckpt", verify=verify)


@pytest.mark.parametrize("mapped", [True, False], ids=["mapped", "streamed"])
def test_every_tensor_round_trips_across_chunk_boundaries(tmp_path, mapped) -> None:
    state = _state()
    back = _load(_blob(state), tmp_path, mapped)
    assert set(back) == set(state)
    for name, t in state.items():
        assert torch.equal(back[name], t), name


@pytest.mark.parametrize("mapped", [True, False], ids=["mapped", "streamed"])
@pytest.mark.parametrize("victim", ["big", "odd", "mid", "bytes"])
def test_damage_names_the_tensor(tmp_path, mapped, victim) -> None:
    blob = bytearray(_blob(_state()))
    header = native.read_header(io.BytesIO(bytes(blob)), len(blob), "s.ckpt")
    entry = next(e for e in header.entries if e.name == victim)
    blob[header.data_start + entry.end - 1] ^= 0x01  # the tensor's very last byte
    with pytest.raises(CorruptCheckpointError, match=rf"s\.ckpt: checksum mismatch in tensor '{victim}'"):
        _load(bytes(blob), tmp_path, mapped)
    unverified = _load(bytes(blob), tmp_path, mapped, verify=False)  # verify=False reads what is there
    assert not torch.equal(unverified[victim], _state()[victim])


def test_slices_cover_every_tensor_once() -> None:
    header = native.read_header(io.BytesIO(_blob(_state())), len(_blob(_state())), "s.ckpt")
    entries = sorted(header.entries, key=lambda e: e.begin)
    groups = stream_read._slices(entries, 3)
    assert 1 < len(groups) <= 3
    assert [e.name for g in groups for e in g] == [e.name for e in entries]


def test_streamed_truncation_is_reported(tmp_path) -> None:
    blob = _blob(_state())
    f = io.BytesIO(blob)
    header = native.read_header(f, len(blob), "s.ckpt")
    short = io.BytesIO(blob[:-1000])  # the header promised more than the stream holds
    with pytest.raises(CorruptCheckpointError, match=r"s\.ckpt: truncated: file ended after \d+ of \d+ data bytes"):
        native.read_tensors(short, header, "s.ckpt")
