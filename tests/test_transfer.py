"""transfer.py: copy a file or a tree, skipping what the destination already holds."""

from __future__ import annotations

import os

import pytest

from torchresume import transfer


def _tree(root) -> dict[str, bytes]:
    content = {"a.ckpt": b"A" * 100, "sub/b.bin": b"B" * 10, "sub/deep/c.txt": b"hello",
               "empty.txt": b""}
    for rel, data in content.items():
        path = os.path.join(str(root), *rel.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    return content


def _read_tree(root) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(str(root)):
        for n in names:
            p = os.path.join(dirpath, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, str(root)).replace(os.sep, "/")] = f.read()
    return out


def test_copy_a_file(tmp_path) -> None:
    src = tmp_path / "x.ckpt"
    src.write_bytes(b"payload" * 10)
    dst = str(tmp_path / "out" / "y.ckpt")
    report = transfer.copy(str(src), dst, progress=False)
    assert report.copied == [str(src)] and report.skipped == [] and report.failed == {}
    assert report.bytes == 70
    assert transfer.read_bytes(dst) == b"payload" * 10


def test_copy_a_tree(tmp_path) -> None:
    content = _tree(tmp_path / "src")
    report = transfer.copy(str(tmp_path / "src"), str(tmp_path / "dst"), progress=False)
    assert sorted(report.copied) == sorted(content)
    assert report.bytes == sum(len(v) for v in content.values())
    assert report.failed == {}
    assert _read_tree(tmp_path / "dst") == content


def test_second_copy_skips_identical_files(tmp_path) -> None:
    content = _tree(tmp_path / "src")
    transfer.copy(str(tmp_path / "src"), str(tmp_path / "dst"), progress=False)
    again = transfer.copy(str(tmp_path / "src"), str(tmp_path / "dst"), progress=False)
    assert again.copied == [] and again.bytes == 0
    assert sorted(again.skipped) == sorted(content)


def test_a_changed_file_is_recopied(tmp_path) -> None:
    _tree(tmp_path / "src")
    transfer.copy(str(tmp_path / "src"), str(tmp_path / "dst"), progress=False)
    (tmp_path / "src" / "sub" / "b.bin").write_bytes(b"C" * 10)  # same size, other bytes
    report = transfer.copy(str(tmp_path / "src"), str(tmp_path / "dst"), progress=False)
    assert report.copied == ["sub/b.bin"]
    assert report.bytes == 10
    assert (tmp_path / "dst" / "sub" / "b.bin").read_bytes() == b"C" * 10


def test_a_file_changed_at_the_destination_is_restored(tmp_path) -> None:
    _tree(tmp_path / "src")
    transfer.copy(str(tmp_path / "src"), str(tmp_path / "dst"), progress=False)
    (tmp_path / "dst" / "a.ckpt").write_bytes(b"junk")
    report = transfer.copy(str(tmp_path / "src"), str(tmp_path / "dst"), progress=False)
    assert report.copied == ["a.ckpt"]
    assert (tmp_path / "dst" / "a.ckpt").read_bytes() == b"A" * 100


def test_missing_source_is_a_clear_error(tmp_path) -> None:
    missing = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError) as err:
        transfer.copy(missing, str(tmp_path / "dst"), progress=False)
    assert str(err.value) == f"{missing}: no such file or directory"
    assert not (tmp_path / "dst").exists()


def test_failures_are_collected_not_dropped(tmp_path) -> None:
    _tree(tmp_path / "src")
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "a.ckpt").mkdir()  # a directory where a file must go
    report = transfer.copy(str(tmp_path / "src"), str(tmp_path / "dst"), progress=False)
    assert list(report.failed) == ["a.ckpt"]
    assert report.failed["a.ckpt"].split(":")[0] in {"IsADirectoryError", "PermissionError",
                                                     "CheckpointWriteError", "OSError"}
    assert sorted(report.copied) == ["empty.txt", "sub/b.bin", "sub/deep/c.txt"]


def test_progress_bar_counts_every_byte(tmp_path, capsys) -> None:
    content = _tree(tmp_path / "src")
    transfer.copy(str(tmp_path / "src"), str(tmp_path / "dst"), progress=True)
    err = capsys.readouterr().err
    total = sum(len(v) for v in content.values())
    assert f"{total}/{total}" in err
