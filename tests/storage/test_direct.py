"""Large local writes through O_DIRECT: the bytes on disk are exactly the bytes given.

The bounce buffer is shrunk to a few blocks so that every case below crosses
buffer and block boundaries many times: parts smaller than a block, parts
larger than the buffer, a last part that ends mid-block (padded, then the file
cut back), and an empty file.
"""

from __future__ import annotations

import os

import pytest
import torch

import torchresume as tr
from torchresume import files
from torchresume.storage import direct, local
from torchresume.storage.local import LocalWriter


@pytest.fixture
def small_buffers(monkeypatch):
    monkeypatch.setattr(direct, "BOUNCE_BYTES", 4 * direct.ALIGN)
    monkeypatch.setattr(direct, "_SMALL_COPY", 1000)  # both copy paths run
    monkeypatch.setattr(local, "DIRECT_MIN_BYTES", 0)


@pytest.mark.parametrize("sizes", [[], [1], [4095], [4096], [3, 70000, 5, 16384, 9999], [4 * 4096 * 3 + 1]],
                         ids=["empty", "one-byte", "block-1", "block", "mixed", "buffers+1"])
def test_direct_write_holds_exactly_the_bytes(small_buffers, tmp_path, sizes) -> None:
    parts = [os.urandom(n) for n in sizes]
    path = str(tmp_path / "f.bin")
    writer = LocalWriter(path, size_hint=sum(sizes))
    assert writer._sink is not None and writer._sink.direct  # ext4 and tmpfs take O_DIRECT here
    for part in parts:
        writer.write(memoryview(part))
    writer.commit()
    with open(path, "rb") as f:
        assert f.read() == b"".join(parts)
    assert os.stat(path).st_mode & 0o777 == 0o400
    assert os.listdir(tmp_path) == ["f.bin"]  # the temporary was renamed, nothing else left


def test_small_files_stay_buffered(tmp_path) -> None:
    writer = LocalWriter(str(tmp_path / "small.bin"), size_hint=direct.DIRECT_MIN_BYTES - 1)
    assert writer._sink is None
    writer.abort()
    assert os.listdir(tmp_path) == []


def test_aborted_direct_write_leaves_nothing(small_buffers, tmp_path) -> None:
    writer = LocalWriter(str(tmp_path / "f.bin"), size_hint=1 << 20)
    writer.write(os.urandom(50000))
    writer.abort()
    writer.abort()  # twice is fine
    assert os.listdir(tmp_path) == []


def test_checkpoint_written_direct_loads_bitwise(small_buffers, tmp_path) -> None:
    state = {"w": torch.randn(1000, 37), "b": torch.arange(7, dtype=torch.int64), "step": 3}
    path = str(tmp_path / "net-1_3.ckpt")
    tr.save_checkpoint(state, path)
    loaded = tr.load_checkpoint(path)
    assert torch.equal(loaded["w"], state["w"]) and torch.equal(loaded["b"], state["b"])
    assert files.verify(path).valid


def test_staged_state_is_written_from_memory_without_a_copy(tmp_path, monkeypatch) -> None:
    """A staged snapshot is one page-aligned run after a page-padded header: no byte is copied
    but the header and the data's last partial block; the file is the same as a buffered one."""
    from safetensors.torch import load_file

    from torchresume.files import encode_state, read_checkpoint
    from torchresume.format import native
    from torchresume.staging import StagingBuffers

    monkeypatch.setattr(local, "DIRECT_MIN_BYTES", 0)
    state = {"w": torch.randn(513, 1031), "b": torch.randn(77, dtype=torch.float64),
             "i": torch.arange(1001, dtype=torch.int16), "e": torch.zeros(0)}
    encoded = encode_state("train_state", StagingBuffers().stage(state), info={"time": 0})
    assert len(encoded.header) % native.PAGE == 0 and len(encoded.parts()) == 2
    path = str(tmp_path / "staged.ckpt")
    writer = LocalWriter(path, size_hint=encoded.size)
    for part in encoded.parts():
        writer.write(part)
    sink = writer._sink
    assert sink is not None and sink.direct
    data = encoded.size - len(encoded.header)
    assert sink.in_place == data - data % direct.ALIGN
    assert sink.copied == len(encoded.header) + data % direct.ALIGN
    writer.commit()
    buffered = str(tmp_path / "buffered.ckpt")
    with open(buffered, "wb") as f:
        for part in encode_state("train_state", state, info={"time": 0}).parts():
            f.write(part)
    assert open(path, "rb").read() == open(buffered, "rb").read()
    loaded = read_checkpoint(path).tree
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    stock = load_file(path)  # the page padding is plain safetensors header whitespace
    assert torch.equal(stock["w"], state["w"])
