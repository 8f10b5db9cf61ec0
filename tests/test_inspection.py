"""inspection.py: describe, diff and checkpoint_files without model code."""

from __future__ import annotations

import os

import pytest
import torch

from torchresume import inspection
from torchresume.files import commit_directory, write_checkpoint, write_part
from torchresume.inspection import TensorChange

KEY = bytes(range(32))


def _native(tmp_path, name: str = "a.ckpt", **tree) -> str:
    path = str(tmp_path / name)
    tree = tree or {"w": torch.ones(2, 3), "b": torch.zeros(3, dtype=torch.float16), "lr": 0.1}
    write_checkpoint(path, "model", tree, info={"epoch": 1}, append={"tag": "x"})
    return path


def test_describe_native(tmp_path) -> None:
    path = _native(tmp_path)
    d = inspection.describe(path)
    assert d.path == path
    assert d.size == os.path.getsize(path)
    assert (d.format, d.kind, d.encrypted) == ("torchresume", "model", False)
    assert d.info == {"epoch": 1}
    assert d.append == {"tag": "x"}
    assert sorted(d.tensors, key=lambda r: r["name"]) == [
        {"name": "b", "dtype": "float16", "shape": [3], "bytes": 6},
        {"name": "w", "dtype": "float32", "shape": [2, 3], "bytes": 24}]
    assert d.values == {"lr": 0.1}
    assert d.to_json()["format"] == "torchresume"


def test_describe_plain_safetensors(tmp_path) -> None:
    from safetensors.torch import save_file
    path = str(tmp_path / "m.safetensors")
    save_file({"x": torch.ones(4, dtype=torch.int64)}, path)
    d = inspection.describe(path)
    assert (d.format, d.kind) == ("safetensors", "safetensors")
    assert d.tensors == [{"name": "x", "dtype": "int64", "shape": [4], "bytes": 32}]
    assert d.info == {} and d.values == {}


def test_describe_torch_file(tmp_path) -> None:
    path = str(tmp_path / "m.pt")
    torch.save({"layer": {"w": torch.ones(2, 2)}, "epoch": 3}, path)
    d = inspection.describe(path)
    assert (d.format, d.kind) == ("torch-zip", "torch")
    assert d.tensors == [{"name": "layer.w", "dtype": "float32", "shape": [2, 2], "bytes": 16}]
    assert d.values == {"epoch": 3}


def test_describe_encrypted_needs_no_key(tmp_path) -> None:
    path = str(tmp_path / "e.ckpt")
    write_checkpoint(path, "model", {"w": torch.ones(8)}, enc_key=KEY)
    d = inspection.describe(path)
    assert (d.format, d.kind, d.encrypted) == ("encrypted", "encrypted", True)
    assert d.info["mode"] == "AES-GCM"
    assert d.info["plain_size"] > 32
    assert d.tensors == []


def test_describe_missing_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        inspection.describe(str(tmp_path / "none.ckpt"))


def test_diff_identical_is_empty(tmp_path) -> None:
    a = _native(tmp_path, "a.ckpt")
    b = _native(tmp_path, "b.ckpt")
    assert inspection.diff(a, b) == []


def test_diff_added_removed_changed(tmp_path) -> None:
    a = _native(tmp_path, "a.ckpt", w=torch.tensor([1.0, 2.0, 3.0]), gone=torch.ones(1),
                same=torch.ones(2), shape=torch.ones(2), lr=0.1)
    b = _native(tmp_path, "b.ckpt", w=torch.tensor([1.0, 2.5, 1.0]), new=torch.ones(1),
                same=torch.ones(2), shape=torch.ones(3), lr=0.2)
    assert inspection.diff(a, b) == [
        TensorChange("gone", "removed"),
        TensorChange("lr", "changed", "0.1 -> 0.2"),
        TensorChange("new", "added"),
        TensorChange("shape", "changed", "torch.float32[2] -> torch.float32[3]"),
        TensorChange("w", "changed", "values", 2.0),
    ]


def test_diff_dtype_change_and_across_formats(tmp_path) -> None:
    a = _native(tmp_path, "a.ckpt", w=torch.ones(2))
    b = str(tmp_path / "b.pt")
    torch.save({"w": torch.ones(2, dtype=torch.float64)}, b)
    (change,) = inspection.diff(a, b)
    assert change == TensorChange("w", "changed", "torch.float32[2] -> torch.float64[2]")


def test_diff_max_abs_diff_of_integers(tmp_path) -> None:
    a = _native(tmp_path, "a.ckpt", n=torch.tensor([0, 5], dtype=torch.int64))
    b = _native(tmp_path, "b.ckpt", n=torch.tensor([-3, 5], dtype=torch.int64))
    assert inspection.diff(a, b) == [TensorChange("n", "changed", "values", 3.0)]


def test_checkpoint_files(tmp_path) -> None:
    a = _native(tmp_path, "a.ckpt")
    torch.save({}, str(tmp_path / "b.pt"))
    (tmp_path / "c.txt").write_text("x")
    done = str(tmp_path / "d.ckpt")
    commit_directory(done, [write_part(done, "p0", "model", {"w": torch.ones(1)})])
    write_part(str(tmp_path / "e.ckpt"), "p0", "model", {"w": torch.ones(1)})  # never committed
    assert inspection.checkpoint_files(str(tmp_path)) == [a, str(tmp_path / "b.pt"), done]
    assert inspection.is_directory(done) and not inspection.is_directory(a)


@pytest.mark.parametrize(("n", "text"), [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"),
                                         (1536 * 1024, "1.5 MiB"), (3 * 1024**3, "3.0 GiB"),
                                         (5 * 1024**4, "5120.0 GiB")])
def test_human_bytes(n, text) -> None:
    assert inspection.human_bytes(n) == text


def test_diff_of_a_file_with_itself_is_empty_even_with_nan(tmp_path) -> None:
    a = _native(tmp_path, "a.ckpt", w=torch.tensor([1.0, float("nan")]))
    assert inspection.diff(a, a) == []
