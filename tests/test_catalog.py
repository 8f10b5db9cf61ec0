"""catalog.py: what a directory holds, newest first, with validity; deleting one checkpoint."""

from __future__ import annotations

import os

import pytest
import torch

from torchresume import catalog, naming
from torchresume.files import commit_directory, write_checkpoint, write_part


def _save(d, name: str, *, time: float | None = None, global_step: int | None = None,
          metrics: dict | None = None) -> str:
    info: dict = {}
    if time is not None:
        info["time"] = time
    if global_step is not None:
        info["global_step"] = global_step
    if metrics is not None:
        info["metrics"] = metrics
    path = os.path.join(str(d), name)
    write_checkpoint(path, "train_state", {"w": torch.ones(2)}, info=info)
    return path


def _names(entries) -> list[str]:
    return [e.name for e in entries]


def test_parse_name() -> None:
    assert naming.parse_name("ckpt-3_120.ckpt") == ("ckpt", 3, 120, False)
    assert naming.parse_name("ckpt-3_120_breakpoint.ckpt") == ("ckpt", 3, 120, True)
    assert naming.parse_name("my-net-best-0_7.ckpt") == ("my-net-best", 0, 7, False)
    assert naming.parse_name("ckpt_2-1_1.ckpt") == ("ckpt_2", 1, 1, False)
    assert naming.parse_name("ckpt-3_120.pt") is None
    assert naming.parse_name("ckpt-3.ckpt") is None
    assert naming.parse_name("-1_1.ckpt") is None


def test_newest_by_header_time_not_by_name(tmp_path) -> None:
    _save(tmp_path, "ckpt-9_9.ckpt", time=100.0, global_step=99)
    _save(tmp_path, "ckpt-1_1.ckpt", time=300.0, global_step=1)
    _save(tmp_path, "ckpt-5_5.ckpt", time=200.0, global_step=50)
    entries = catalog.list_checkpoints(str(tmp_path))
    assert _names(entries) == ["ckpt-1_1.ckpt", "ckpt-5_5.ckpt", "ckpt-9_9.ckpt"]
    assert [e.saved_at for e in entries] == [300.0, 200.0, 100.0]
    assert [e.when for e in entries] == [300.0, 200.0, 100.0]


def test_same_time_ties_broken_by_global_step(tmp_path) -> None:
    _save(tmp_path, "ckpt-1_10.ckpt", time=100.0, global_step=10)
    _save(tmp_path, "ckpt-1_30.ckpt", time=100.0, global_step=30)
    _save(tmp_path, "ckpt-1_20.ckpt", time=100.0, global_step=20)
    entries = catalog.list_checkpoints(str(tmp_path))
    assert _names(entries) == ["ckpt-1_30.ckpt", "ckpt-1_20.ckpt", "ckpt-1_10.ckpt"]
    assert [e.global_step for e in entries] == [30, 20, 10]


def test_without_header_time_the_mtime_counts(tmp_path) -> None:
    a = _save(tmp_path, "ckpt-1_1.ckpt")
    b = _save(tmp_path, "ckpt-1_2.ckpt")
    os.utime(a, (2_000_000_000, 2_000_000_000))
    os.utime(b, (1_000_000_000, 1_000_000_000))
    entries = catalog.list_checkpoints(str(tmp_path))
    assert _names(entries) == ["ckpt-1_1.ckpt", "ckpt-1_2.ckpt"]
    assert entries[0].saved_at is None and entries[0].when == 2_000_000_000


def test_entry_fields_from_name_and_header(tmp_path) -> None:
    _save(tmp_path, "net-2_7_breakpoint.ckpt", time=5.0, global_step=70,
          metrics={"acc": 0.5, "note": "x"})
    (e,) = catalog.list_checkpoints(str(tmp_path))
    assert (e.prefix, e.epoch, e.step, e.breakpoint) == ("net", 2, 7, True)
    assert e.global_step == 70
    assert e.metrics == {"acc": 0.5}  # non-numeric metrics dropped
    assert e.valid and e.reason == ""
    assert e.size == os.path.getsize(tmp_path / "net-2_7_breakpoint.ckpt")
    assert e.to_json()["name"] == "net-2_7_breakpoint.ckpt"


def test_header_epoch_and_step_override_the_name(tmp_path) -> None:
    path = str(tmp_path / "ckpt-1_1.ckpt")
    write_checkpoint(path, "train_state", {"w": torch.ones(1)}, info={"epoch": 4, "step": 9})
    (e,) = catalog.list_checkpoints(str(tmp_path))
    assert (e.epoch, e.step) == (4, 9)


def test_best_names_and_prefix_filter(tmp_path) -> None:
    _save(tmp_path, "ckpt-1_1.ckpt", time=1.0)
    _save(tmp_path, "ckpt-best-1_1.ckpt", time=2.0)
    _save(tmp_path, "other-1_1.ckpt", time=3.0)
    assert _names(catalog.list_checkpoints(str(tmp_path), prefix="ckpt")) == ["ckpt-1_1.ckpt"]
    best = catalog.list_checkpoints(str(tmp_path), prefix="ckpt-best")
    assert _names(best) == ["ckpt-best-1_1.ckpt"]
    assert best[0].prefix == "ckpt-best"
    assert len(catalog.list_checkpoints(str(tmp_path))) == 3


def test_only_checkpoint_suffixes_and_no_hidden_files(tmp_path) -> None:
    _save(tmp_path, "ckpt-1_1.ckpt", time=1.0)
    _save(tmp_path, "weights.pt", time=2.0)
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "ckpt-graph.json").write_text("{}")
    (tmp_path / ".ckpt-2_2.ckpt.tmp").write_bytes(b"partial")
    entries = catalog.list_checkpoints(str(tmp_path))
    assert _names(entries) == ["weights.pt", "ckpt-1_1.ckpt"]
    assert entries[0].prefix is None and entries[0].epoch is None


def test_missing_directory_lists_nothing(tmp_path) -> None:
    assert catalog.list_checkpoints(str(tmp_path / "nope")) == []


def test_invalid_files_are_listed_with_a_reason(tmp_path) -> None:
    (tmp_path / "ckpt-1_1.ckpt").write_bytes(b"")
    (tmp_path / "ckpt-1_2.ckpt").write_bytes(b"hello, not a checkpoint at all")
    good = _save(tmp_path, "ckpt-1_3.ckpt", time=1.0)
    flipped = _save(tmp_path, "ckpt-1_4.ckpt", time=2.0)
    os.chmod(flipped, 0o644)
    with open(flipped, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)[0]
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last ^ 0xFF]))
    by_name = {e.name: e for e in catalog.list_checkpoints(str(tmp_path))}
    assert by_name["ckpt-1_3.ckpt"].valid and by_name["ckpt-1_3.ckpt"].path == good
    empty = by_name["ckpt-1_1.ckpt"]
    assert not empty.valid
    assert empty.reason == (f"{empty.path}: the file is empty (0 bytes): a write was interrupted; "
                            "delete it and use an older checkpoint")
    junk = by_name["ckpt-1_2.ckpt"]
    assert not junk.valid and "not a checkpoint torchresume can read" in junk.reason
    bad = by_name["ckpt-1_4.ckpt"]
    assert not bad.valid
    assert bad.reason == (f"{flipped}: checksum mismatch in tensor 'w'; the data is damaged "
                          "(bit flip or partial write)")
    # the header is fine, so its facts are still read
    assert bad.saved_at == 2.0
    # without verify only header-level damage shows
    quick = {e.name: e for e in catalog.list_checkpoints(str(tmp_path), verify=False)}
    assert quick["ckpt-1_4.ckpt"].valid
    assert not quick["ckpt-1_1.ckpt"].valid


def _dir_checkpoint(d, name: str, *, commit: bool, time: float = 1.0) -> str:
    path = os.path.join(str(d), name)
    part = write_part(path, "rank0", "train_state", {"w": torch.ones(3)})
    if commit:
        commit_directory(path, [part], info={"time": time, "global_step": 5})
    return path


def test_directory_checkpoints_only_when_committed(tmp_path) -> None:
    committed = _dir_checkpoint(tmp_path, "ckpt-1_5.ckpt", commit=True, time=10.0)
    _dir_checkpoint(tmp_path, "ckpt-1_6.ckpt", commit=False)
    _save(tmp_path, "ckpt-1_4.ckpt", time=5.0)
    entries = catalog.list_checkpoints(str(tmp_path))
    assert _names(entries) == ["ckpt-1_5.ckpt", "ckpt-1_4.ckpt"]
    d = entries[0]
    assert d.is_dir and d.valid and d.path == committed
    assert d.global_step == 5 and d.saved_at == 10.0
    assert d.size == os.path.getsize(os.path.join(committed, "rank0.safetensors"))


def test_directory_checkpoint_with_a_damaged_part_is_invalid(tmp_path) -> None:
    path = _dir_checkpoint(tmp_path, "ckpt-1_5.ckpt", commit=True)
    part = os.path.join(path, "rank0.safetensors")
    os.chmod(part, 0o644)
    with open(part, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        f.write(b"\x09")
    (e,) = catalog.list_checkpoints(str(tmp_path))
    assert e.is_dir and not e.valid
    assert e.reason == (f"{part}: checksum mismatch in tensor 'w'; the data is damaged "
                        "(bit flip or partial write)")


def test_delete_a_file(tmp_path) -> None:
    path = _save(tmp_path, "ckpt-1_1.ckpt", time=1.0)
    keep = _save(tmp_path, "ckpt-1_2.ckpt", time=2.0)
    (entry,) = [e for e in catalog.list_checkpoints(str(tmp_path)) if e.path == path]
    catalog.delete(entry)
    assert not os.path.exists(path)
    assert os.path.exists(keep)
    catalog.delete(keep)  # a path works too
    assert catalog.list_checkpoints(str(tmp_path)) == []


def test_delete_a_directory_checkpoint(tmp_path) -> None:
    path = _dir_checkpoint(tmp_path, "ckpt-1_5.ckpt", commit=True)
    (entry,) = catalog.list_checkpoints(str(tmp_path))
    catalog.delete(entry)
    assert not os.path.exists(path)
    assert catalog.list_checkpoints(str(tmp_path)) == []


def test_order_key() -> None:
    e = catalog.ListedCheckpoint("p", "n", 0, mtime=5.0, epoch=2, step=3)
    assert e.order_key() == (5.0, -1, 2, 3)
    e.saved_at, e.global_step = 7.0, 9
    assert e.order_key() == (7.0, 9, 2, 3)


@pytest.mark.parametrize("name", ["a-1_1.safetensors", "a-1_1.bin", "a-1_1.pth"])
def test_other_suffixes_are_listed_unparsed(tmp_path, name) -> None:
    _save(tmp_path, name)
    (e,) = catalog.list_checkpoints(str(tmp_path))
    assert e.name == name and e.prefix is None and e.valid


def test_callbacks_scores_are_not_weights_for_the_finite_check() -> None:
    from torchresume.catalog import tree_finite
    best = {"callbacks": {"ModelCheckpoint": {"kth_value": torch.tensor(float("inf"))}}}
    assert tree_finite({"w": torch.ones(2), **best})  # a best score starts at +-inf
    assert not tree_finite({"w": torch.tensor([float("nan")]), **best})
    ranks = {"rank_states": {0: {"lightning": best}, 1: {"lightning": best}}}  # a sharded one read as one
    assert tree_finite({"w": torch.ones(2), **ranks})
    assert not tree_finite({"w": torch.tensor([float("inf")]), **ranks})
