"""Mutated files never crash the loader with anything but a typed error, and never load wrong data."""

from __future__ import annotations

import io

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import torchresume as tr
from torchresume.errors import TorchResumeError
from torchresume.format import reader


@pytest.fixture(scope="module")
def blob(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("fuzz") / "f.ckpt"
    torch.manual_seed(0)
    tr.save_checkpoint({"w": torch.randn(8, 4), "b": torch.arange(5), "opt": {
        "state": {0: {"m": torch.ones(3)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}},
        str(path))
    return path.read_bytes()


def _load(data: bytes) -> object:
    return reader.read(io.BytesIO(data), len(data), "fuzz.ckpt")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutations_raise_typed_errors(blob: bytes, data: st.DataObject) -> None:
    mutated = bytearray(blob)
    op = data.draw(st.sampled_from(["flip", "truncate", "splice", "zero"]))
    if op == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            pos = data.draw(st.integers(0, len(mutated) - 1))
            mutated[pos] ^= 1 << data.draw(st.integers(0, 7))
    elif op == "truncate":
        del mutated[data.draw(st.integers(0, len(mutated) - 1)):]
    elif op == "splice":
        pos = data.draw(st.integers(0, len(mutated)))
        mutated[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
    else:
        start = data.draw(st.integers(0, len(mutated) - 1))
        mutated[start:start + data.draw(st.integers(1, 64))] = b"\0" * 64
        del mutated[len(blob):]
    if bytes(mutated) == blob:
        return
    try:
        ckpt = _load(bytes(mutated))
    except TorchResumeError as exc:
        assert str(exc).startswith("fuzz.ckpt: ")
        return
    original = _load(blob)
    if ckpt.format != original.format:
        # Flips that rename both metadata keys ("torchresume", "torchresume_check") leave a valid plain
        # safetensors file, which is read as one: its tensors under their flat names, intact.
        _assert_flat_copy(ckpt, original)
        return
    # A mutation that still loads may only touch bytes no reader depends on
    # (header padding, the safetensors "format" hint): the state must be intact.
    for name in ("w", "b"):
        assert torch.equal(ckpt.tree[name], original.tree[name])
    assert torch.equal(ckpt.tree["opt"]["state"][0]["m"], original.tree["opt"]["state"][0]["m"])
    assert ckpt.tree["opt"]["param_groups"] == original.tree["opt"]["param_groups"]


def _assert_flat_copy(ckpt: reader.Checkpoint, original: reader.Checkpoint) -> None:
    flat = {"w": original.tree["w"], "b": original.tree["b"], "opt.state.0.m": original.tree["opt"]["state"][0]["m"]}
    assert ckpt.format == "safetensors" and set(ckpt.tree) == set(flat)
    assert all(torch.equal(ckpt.tree[k], v) for k, v in flat.items())


def test_renaming_both_metadata_keys_leaves_a_plain_safetensors_file(blob: bytes) -> None:
    """The case the fuzzer found: 3 flips turn the keys into "torchre{ume" and "uorchresume_check"."""
    mutated = bytearray(blob)
    for key in (b'"torchresume":', b'"torchresume_check":'):
        at = blob.index(key) + (8 if key == b'"torchresume":' else 1)
        mutated[at] ^= 0x08 if key == b'"torchresume":' else 0x01
    _assert_flat_copy(_load(bytes(mutated)), _load(blob))
