"""Hostile run directories and directory checkpoints (issue 35, items 1-3), in process.

Nothing outside the run directory or the checkpoint is read, written or deleted: every sentinel
file outside stays as it was, and a checkpoint whose data lives only outside never loads. One
damaged entry never stops a run: ls, verify, prune and resume pass over it to the older checkpoint.
"""

from __future__ import annotations

import json
import os
import threading

import pytest
import torch

import torchresume as tr
from torchresume import catalog, files
from torchresume.errors import CheckpointNotFoundError, CorruptCheckpointError, StorageError, UnsafePathError
from torchresume.files import directory, write_encoded
from torchresume.files.single import encode_weights
from torchresume.manager import prune
from torchresume.run_lock import LOCK_NAME

SENTINEL = b"KEEP: a file outside the run directory\n"


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(3, 2)


def _sentinel(path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(SENTINEL)
    return str(path)


def _dir_checkpoint(run, name: str = "net-1_1.ckpt", value: float = 1.0) -> str:
    """A directory checkpoint of one part, its weights all ``value``."""
    path = str(run / name)
    os.makedirs(path)
    part = directory.write_part(path, "rank0", "state", {"weight": torch.full((2, 3), value), "bias": torch.zeros(2)})
    directory.commit_directory(path, [part], info={"epoch": 1, "step": 1, "global_step": 1, "prefix": "net"})
    return path


def _edit_manifest(path: str, edit) -> None:
    target = os.path.join(path, directory.MANIFEST)
    doc = json.loads(open(target).read())
    edit(doc)
    os.chmod(target, 0o600)
    with open(target, "w") as f:
        json.dump(doc, f)


# -- item 2: names in a manifest are confined to the checkpoint -----------------------------------

@pytest.mark.parametrize("name", ["/abs", "../../outside/rank0.safetensors", "sub/../rank0.safetensors", 7, None])
def test_a_part_named_outside_never_loads(tmp_path, name) -> None:
    """The part's data moved outside and the manifest pointed at it: refused, naming it."""
    path = _dir_checkpoint(tmp_path / "run")
    outside = tmp_path / "outside"
    outside.mkdir()
    os.replace(os.path.join(path, "rank0.safetensors"), outside / "rank0.safetensors")
    if name == "/abs":
        name = str(outside / "rank0.safetensors")

    def point(doc):
        doc["parts"][0]["file"] = name
    _edit_manifest(path, point)
    with pytest.raises(UnsafePathError) as exc:
        tr.load_checkpoint(path)
    assert str(exc.value).startswith(f"{path}/manifest.json: names the file {name!r}, ")
    assert not files.verify(path).valid
    with pytest.raises(UnsafePathError):
        files.describe(path)


def test_a_part_that_is_a_link_leading_out_never_loads(tmp_path) -> None:
    path = _dir_checkpoint(tmp_path / "run")
    outside = tmp_path / "outside"
    outside.mkdir()
    os.replace(os.path.join(path, "rank0.safetensors"), outside / "rank0.safetensors")
    os.symlink(outside / "rank0.safetensors", os.path.join(path, "rank0.safetensors"))
    with pytest.raises(UnsafePathError) as exc:
        tr.load_checkpoint(path)
    assert str(exc.value).startswith(f"{path}/rank0.safetensors: a symbolic link (to {outside}/rank0.safetensors)")
    with pytest.raises(UnsafePathError):
        files.describe(path)


# -- item 3: bounded reads and typed errors; one bad entry never stops the run ---------------------

def _run_with_good_and_bad(tmp_path):
    run = tmp_path / "run"
    good = _dir_checkpoint(run, "net-1_1.ckpt", 1.0)
    bad = _dir_checkpoint(run, "net-1_9.ckpt", 9.0)
    return run, good, bad


def _passes_over(run, good: str, bad: str, reason: str) -> None:
    """verify, ls, resume and prune all pass over ``bad``; the older ``good`` is resumed from."""
    verdict = files.verify(bad)
    assert not verdict.valid and reason in verdict.reason
    entries = catalog.list_checkpoints(str(run))
    assert [(e.path, e.valid) for e in entries if e.path == bad] == [(bad, False)]
    assert reason in next(e.reason for e in entries if e.path == bad)
    net = _net()
    mgr = tr.CheckpointManager(str(run), model=net, prefix="net", keep=None)
    mgr.restore_latest()
    assert torch.equal(net.weight, torch.full((2, 3), 1.0))
    mgr.close()
    assert prune(str(run), 1) == []  # the good one is the newest verified: kept


def test_manifest_linked_to_dev_zero_is_passed_over(tmp_path) -> None:
    run, good, bad = _run_with_good_and_bad(tmp_path)
    target = os.path.join(bad, directory.MANIFEST)
    os.chmod(target, 0o600)
    os.unlink(target)
    os.symlink("/dev/zero", target)
    _passes_over(run, good, bad, f"{target}: a symbolic link (to /dev/zero)")


def _within(seconds: float, fifo: str, check) -> None:
    """Run ``check`` in a thread; fail if it blocks (a FIFO opened for reading waits for a writer)."""
    done = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            check()
        except BaseException as exc:  # handed to the test's thread
            failure.append(exc)
        done.set()
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    if not done.is_set():  # release the blocked open so the test process can end
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"reading the FIFO {fifo} blocked")
    if failure:
        raise failure[0]


def test_manifest_fifo_is_refused_without_blocking(tmp_path) -> None:
    run, good, bad = _run_with_good_and_bad(tmp_path)
    target = os.path.join(bad, directory.MANIFEST)
    os.chmod(target, 0o600)
    os.unlink(target)
    os.mkfifo(target)
    _within(60, target, lambda: _passes_over(
        run, good, bad, f"{bad}/manifest.json: not a regular file (a FIFO, a device or a socket)"))


def test_a_named_fifo_or_device_is_refused_before_any_read(tmp_path) -> None:
    fifo = str(tmp_path / "x.ckpt")
    os.mkfifo(fifo)
    link = str(tmp_path / "zero.ckpt")
    os.symlink("/dev/zero", link)

    def check() -> None:
        for path in (fifo, link):
            with pytest.raises(UnsafePathError, match=r"not a regular file \(a FIFO, a device or a socket\)"):
                tr.load_checkpoint(path)
    _within(60, fifo, check)


def test_deeply_nested_manifest_is_passed_over(tmp_path) -> None:
    run, good, bad = _run_with_good_and_bad(tmp_path)
    target = os.path.join(bad, directory.MANIFEST)
    os.chmod(target, 0o600)
    with open(target, "w") as f:
        f.write("[" * 100_000)
    _passes_over(run, good, bad, f"{target}: the manifest nests JSON too deeply; the file is damaged or hostile")


@pytest.mark.parametrize(("edit", "reason"), [
    (lambda d: d["parts"][0].pop("header_xxh3"), "part 'rank0.safetensors' has no valid 'header_xxh3'"),
    (lambda d: d["parts"][0].pop("file"), "names the file None, which is not a file name; "
     "the checkpoint is damaged or was crafted"),
    (lambda d: d["parts"].__setitem__(0, "rank0.safetensors"), "part 0 is 'rank0.safetensors', not a record"),
    (lambda d: d["parts"][0].__setitem__("file", 3), "names the file 3, which is not a file name; "
     "the checkpoint is damaged or was crafted"),
    (lambda d: d["parts"][0].__setitem__("size", "12"), "part 'rank0.safetensors' has no valid 'size'"),
    (lambda d: d.__setitem__("info", []), "'info' is not a JSON object"),
    (lambda d: d.__setitem__("parts", []), "names no part files"),
    (lambda d: d["parts"].append(dict(d["parts"][0])), "part 'rank0.safetensors' has a duplicate 'file'"),
])
def test_malformed_manifest_is_a_typed_error(tmp_path, edit, reason) -> None:
    run, good, bad = _run_with_good_and_bad(tmp_path)
    _edit_manifest(bad, edit)
    with pytest.raises(CorruptCheckpointError) as exc:
        tr.load_checkpoint(bad)
    tail = "" if ";" in reason else "; the manifest is damaged"  # a bad name: check_name's own words
    assert str(exc.value) == f"{bad}/manifest.json: {reason}{tail}"
    _passes_over(run, good, bad, reason)


# -- item 1: deletes and resume never follow a link out of the run directory -----------------------

def test_retention_and_resume_never_follow_a_linked_checkpoint(tmp_path) -> None:
    other = tmp_path / "other"
    theirs = _dir_checkpoint(other, "net-1_3.ckpt", 3.0)
    their_file = str(other / "net-1_4.ckpt")
    tr.CheckpointManager(str(other), model=torch.nn.Linear(3, 2), prefix="x").save(1, 4)
    os.replace(other / "x-1_4.ckpt", their_file)
    run = tmp_path / "run"
    _dir_checkpoint(run, "net-1_1.ckpt", 1.0)
    os.symlink(theirs, run / "net-1_3.ckpt")
    os.symlink(their_file, run / "net-1_4.ckpt")
    before = {p: open(p, "rb").read() for p in (os.path.join(theirs, directory.MANIFEST), their_file)}

    net = _net()
    mgr = tr.CheckpointManager(str(run), model=net, prefix="net", keep=1)
    assert mgr.restore_latest() is not None  # its own, not the link's target
    assert torch.equal(net.weight, torch.full((2, 3), 1.0))
    mgr.save(1, 2, 2)
    mgr.wait()
    mgr.close()
    assert prune(str(run), 1) == []  # retention kept one (net-1_2); the links are no checkpoints of the run
    for p, data in before.items():
        assert open(p, "rb").read() == data  # the other run is untouched
    assert directory.is_committed(theirs)
    assert [e.name for e in catalog.list_checkpoints(str(run))] == ["net-1_2.ckpt"]


def test_deleting_a_linked_checkpoint_removes_only_the_link(tmp_path) -> None:
    theirs = _dir_checkpoint(tmp_path / "other", "net-1_3.ckpt", 3.0)
    link = str(tmp_path / "net-1_3.ckpt")
    os.symlink(theirs, link)
    catalog.delete(link)
    assert not os.path.lexists(link)
    assert directory.is_committed(theirs)


def test_lock_link_is_refused_and_its_target_kept(tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    outside = _sentinel(tmp_path / "outside" / "v")
    os.symlink(outside, run / LOCK_NAME)
    mgr = tr.CheckpointManager(str(run), model=_net())
    with pytest.raises(UnsafePathError) as exc:
        mgr.acquire_lock()
    assert str(exc.value) == (f"{run / LOCK_NAME}: a symbolic link (to {outside}); torchresume writes its own "
                              "files only, never through a link: remove it")
    assert open(outside, "rb").read() == SENTINEL


def test_summary_link_is_refused_and_its_target_kept(tmp_path) -> None:
    outside = _sentinel(tmp_path / "outside" / "v")
    (tmp_path / "run").mkdir()
    os.symlink(outside, tmp_path / "run" / "summary.jsonl")
    collector = tr.SummaryCollector(str(tmp_path / "run"))
    with pytest.raises(UnsafePathError, match="summary.jsonl: a symbolic link"):
        collector._write({"kind": "step"})
    assert open(outside, "rb").read() == SENTINEL


# -- discovery: only files with torchresume's run metadata -----------------------------------------

def test_a_stripped_plain_safetensors_file_is_never_resumed_from(tmp_path) -> None:
    run = tmp_path / "run"
    net = _net()
    mgr = tr.CheckpointManager(str(run), model=net, prefix="net", keep=None)
    mgr.save(1, 1, 1)
    mgr.close()
    stripped = str(run / "net-1_9.ckpt")
    tr.save_checkpoint({"weight": torch.full((2, 3), 9.0), "bias": torch.zeros(2)}, stripped + ".tmp")
    write_encoded(encode_weights(tr.load_checkpoint(stripped + ".tmp")), stripped, None)
    os.unlink(stripped + ".tmp")
    entry = next(e for e in catalog.list_checkpoints(str(run)) if e.path == stripped)
    assert not entry.valid and "a plain safetensors file without torchresume's run metadata" in entry.reason
    fresh = _net()
    resumed = tr.CheckpointManager(str(run), model=fresh, prefix="net", keep=None)
    resumed.restore_latest()
    resumed.close()
    assert torch.equal(fresh.weight, net.weight)  # the run's own checkpoint, not the stripped file
    assert torch.equal(tr.load_checkpoint(stripped)["weight"], torch.full((2, 3), 9.0))  # by name: loads


def test_a_linked_backup_is_never_resumed_from(tmp_path) -> None:
    from tests.train.helpers import toy_data, toy_model
    other = tmp_path / "other"
    toy_model().train(1, toy_data(), [tr.BackupAndRestore(str(other), delete_checkpoint=False)])
    before = open(other / "backup.ckpt", "rb").read()
    (tmp_path / "run").mkdir()
    os.symlink(other / "backup.ckpt", tmp_path / "run" / "backup.ckpt")
    with pytest.raises(UnsafePathError, match=r"run/backup.ckpt: a symbolic link \(to .*other/backup.ckpt\)"):
        toy_model().train(1, toy_data(), [tr.BackupAndRestore(str(tmp_path / "run"))])
    assert open(other / "backup.ckpt", "rb").read() == before


# -- a non-regular entry in the lock's or the summary's place (review of #35) -----------------------

def _not_regular(path) -> str:
    return (f"{path}: is not a regular file (a directory, FIFO, socket or device); torchresume writes "
            "its own files only, never into such an entry: remove it and run again")


@pytest.mark.parametrize("make", [os.mkfifo, os.mkdir], ids=["fifo", "directory"])
def test_a_non_regular_lock_or_summary_is_refused_typed(tmp_path, make) -> None:
    run = tmp_path / "run"
    run.mkdir()
    make(run / LOCK_NAME)
    make(run / "summary.jsonl")
    with pytest.raises(UnsafePathError) as exc:
        tr.CheckpointManager(str(run), model=_net()).acquire_lock()
    assert str(exc.value) == _not_regular(run / LOCK_NAME)
    with pytest.raises(UnsafePathError) as exc:
        tr.SummaryCollector(str(run))._write({"kind": "step"})
    assert str(exc.value) == _not_regular(run / "summary.jsonl")


def test_training_writes_nothing_before_refusing_a_fifo_summary(tmp_path) -> None:
    from tests.train.helpers import toy_data, toy_model
    run = tmp_path / "run"
    run.mkdir()
    os.mkfifo(run / "summary.jsonl")  # opened for writing without a reader: ENXIO, never a block
    cfg = tr.CheckpointConfig(save_checkpoint_steps=1, exception_save=True)
    with pytest.raises(UnsafePathError) as exc:
        toy_model().train(1, toy_data(), [tr.ModelCheckpoint("toy", str(run), cfg), tr.SummaryCollector(str(run))])
    assert str(exc.value) == _not_regular(run / "summary.jsonl")
    assert sorted(os.listdir(run)) == ["summary.jsonl", "toy-graph.json"]  # no breakpoint checkpoint


# -- discovery: a plain MindSpore file is never resumed from (review of #35) -------------------------

def _mindspore_file(path: str, value: float) -> None:
    from torchresume.format import mindspore
    entries = {"weight": torch.full((2, 3), value), "bias": torch.zeros(2)}
    with open(path, "wb") as f:
        f.write(b"".join(bytes(p) for p in mindspore.encode(entries, crc_check=True)))


def test_a_plain_mindspore_file_is_never_resumed_from(tmp_path) -> None:
    run = tmp_path / "run"
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    mgr = tr.CheckpointManager(str(run), model=net, optimizer=opt, prefix="net", keep=None, file_format="ckpt")
    mgr.save(1, 1, 1)
    mgr.close()
    plain = str(run / "net-1_99.ckpt")  # newer by its name and its mtime
    _mindspore_file(plain, 9.0)
    entries = {e.path: e for e in catalog.list_checkpoints(str(run))}
    assert not entries[plain].valid and entries[plain].reason == (
        f"{plain}: a plain mindspore file without torchresume's run metadata; resume and retention never "
        "pick it as a checkpoint of the run (load it by name)")
    own = str(run / "net-1_1.ckpt")
    assert entries[own].valid and (entries[own].epoch, entries[own].step, entries[own].global_step) == (1, 1, 1)
    fresh = _net()
    resumed = tr.CheckpointManager(str(run), model=fresh, prefix="net", keep=None, file_format="ckpt")
    assert resumed.restore_latest()["path"] == own
    resumed.close()
    assert torch.equal(fresh.weight, net.weight)
    assert torch.equal(tr.load_checkpoint(plain)["weight"], torch.full((2, 3), 9.0))  # by name: loads
    assert "torchresume_run" not in tr.load_checkpoint(own)  # the run entry is metadata, not state


def test_a_crafted_run_entry_in_a_mindspore_file_is_typed(tmp_path) -> None:
    from torchresume.format import mindspore
    path = str(tmp_path / "net-1_1.ckpt")
    with open(path, "wb") as f:
        f.write(b"".join(bytes(p) for p in mindspore.encode(
            {"weight": torch.ones(2), "torchresume_run": "[" * 100_000}, crc_check=True)))
    with pytest.raises(CorruptCheckpointError) as exc:
        tr.load_checkpoint(path)
    assert str(exc.value) == (f"{path}: its 'torchresume_run' entry nests JSON too deeply; the file is "
                              "damaged or hostile")


def test_a_named_link_loop_or_unreadable_file_is_a_typed_error(tmp_path) -> None:
    """A checkpoint path that is a link to itself (ELOOP) was a raw OSError from load and inspect
    (benchmarks/fuzz_checkpoints.py found it for single-file, encrypted and MindSpore files)."""
    loop = str(tmp_path / "loop.ckpt")
    os.symlink(loop, loop)
    for read in (tr.load_checkpoint, files.describe):
        with pytest.raises(CheckpointNotFoundError) as caught:
            read(loop)
        assert str(caught.value) == (f"{loop}: a loop of symbolic links, which leads to no file; "
                                     "point at the checkpoint file itself")
    if os.geteuid() != 0:  # root reads a file whatever its mode
        locked = tmp_path / "locked.ckpt"
        tr.save_checkpoint({"w": torch.ones(2)}, str(locked))
        os.chmod(locked, 0)
        with pytest.raises(StorageError, match=r"locked.ckpt: cannot open it \(Permission denied\)"):
            tr.load_checkpoint(str(locked))


def test_resume_passes_over_a_link_loop_to_the_older_checkpoint(tmp_path) -> None:
    net = _net()
    mgr = tr.CheckpointManager(str(tmp_path), model=net, prefix="net", keep=None)
    mgr.save(1, 1)
    with torch.no_grad():
        net.weight.add_(1.0)
    newest = mgr.save(1, 2)
    mgr.close()
    os.unlink(newest)
    os.symlink(newest, newest)  # the newest now names a loop
    fresh = _net()
    with torch.no_grad():
        fresh.weight.zero_()
    again = tr.CheckpointManager(str(tmp_path), model=fresh, prefix="net", keep=None)
    again.restore_latest()
    again.close()
    assert torch.equal(fresh.weight, _net().weight)  # the step-1 weights
