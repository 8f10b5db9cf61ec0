"""transfer.py against object storage (moto): uploads are committed and skipped when identical."""

from __future__ import annotations

import pytest

from torchresume import catalog, transfer


def test_local_to_s3_and_back(tmp_path, bucket) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.ckpt").write_bytes(b"A" * 50)
    (src / "sub" / "b.txt").write_bytes(b"bee")
    remote = bucket + "/run"
    report = transfer.copy(str(src), remote, progress=False)
    assert sorted(report.copied) == ["a.ckpt", "sub/b.txt"] and report.failed == {}
    assert transfer.read_bytes(remote + "/a.ckpt") == b"A" * 50
    assert transfer.read_bytes(remote + "/sub/b.txt") == b"bee"

    again = transfer.copy(str(src), remote, progress=False)
    assert again.copied == [] and sorted(again.skipped) == ["a.ckpt", "sub/b.txt"]

    (src / "a.ckpt").write_bytes(b"Z" * 50)
    third = transfer.copy(str(src), remote, progress=False)
    assert third.copied == ["a.ckpt"]
    assert transfer.read_bytes(remote + "/a.ckpt") == b"Z" * 50

    back = transfer.copy(remote, str(tmp_path / "back"), progress=False)
    assert sorted(back.copied) == ["a.ckpt", "sub/b.txt"]
    assert (tmp_path / "back" / "sub" / "b.txt").read_bytes() == b"bee"
    back_again = transfer.copy(remote, str(tmp_path / "back"), progress=False)
    assert back_again.copied == [] and sorted(back_again.skipped) == ["a.ckpt", "sub/b.txt"]


def test_copied_checkpoint_is_listed_remotely(tmp_path, bucket) -> None:
    import torch

    from torchresume.files import write_checkpoint
    local = tmp_path / "ckpt-1_1.ckpt"
    write_checkpoint(str(local), "model", {"w": torch.ones(2)}, info={"time": 1.0})
    transfer.copy(str(local), bucket + "/ckpt-1_1.ckpt", progress=False)
    (entry,) = catalog.list_checkpoints(bucket)
    assert entry.name == "ckpt-1_1.ckpt" and entry.valid and entry.saved_at == 1.0


def test_missing_remote_source(bucket) -> None:
    with pytest.raises(FileNotFoundError) as err:
        transfer.copy(bucket + "/nope", "/tmp/never-used-by-torchresume-tests", progress=False)
    assert str(err.value) == f"{bucket}/nope: no such file or directory"
