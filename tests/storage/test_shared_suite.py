"""One suite, every backend: the same guarantees on local disk and on S3."""

from __future__ import annotations

import torch

import torchresume as tr
from torchresume import CheckpointManager, KeepLast
from torchresume.catalog import list_checkpoints
from torchresume.cli.main import main
from torchresume.storage import resolve


def test_write_list_read_delete(root) -> None:
    store, where = resolve(root)
    path = store.join(where, "a.bin")
    store.write_atomic(path, [b"hello ", memoryview(b"world")])
    assert [(i.name, i.size) for i in store.list(where)] == [("a.bin", 11)]
    f, size = store.open_read(path)
    with f:
        assert (f.read(), size) == (b"hello world", 11)
    store.delete(path)
    assert store.list(where) == []
    store.delete(path)  # absent is fine


def test_missing_file_is_typed(root) -> None:
    store, where = resolve(root)
    try:
        store.open_read(store.join(where, "nope.ckpt"))
    except tr.CheckpointNotFoundError as exc:
        assert "nope.ckpt: no such checkpoint" in str(exc)
    else:
        raise AssertionError("expected CheckpointNotFoundError")


def test_save_load_by_url(root, net) -> None:
    path = root.rstrip("/") + "/m.ckpt"
    tr.save_checkpoint(net, path, append_dict={"epoch_num": 1})
    d = tr.load_checkpoint(path)
    assert torch.equal(d["fc1.weight"], net.fc1.weight) and d["epoch_num"] == 1


def test_manager_retention_and_restore(root, trained) -> None:
    net, opt = trained
    mgr = CheckpointManager(root, model=net, optimizer=opt, prefix="run", keep=[KeepLast(2)])
    for step in (1, 2, 3):
        mgr.save(1, step, step)
    mgr.wait()
    names = [e.name for e in list_checkpoints(root, verify=True)]
    assert names == ["run-1_3.ckpt", "run-1_2.ckpt"]
    from tests.conftest import TinyNet
    fresh = TinyNet()
    info = CheckpointManager(root, model=fresh, prefix="run").restore_latest()
    assert info is not None and info["global_step"] == 3
    assert torch.equal(fresh.fc1.weight, net.fc1.weight)


def test_cli_ls_and_verify(root, net, capsys) -> None:
    tr.save_checkpoint(net, root.rstrip("/") + "/lenet-1_5.ckpt")
    assert main(["ls", root]) == 0
    out = capsys.readouterr().out
    assert "lenet-1_5.ckpt" in out and "valid" in out
    assert main(["verify", root]) == 0


def test_inspect_reads_only_the_header(root) -> None:
    big = {"w": torch.zeros(4 << 20)}  # 16 MiB of data, a header of a few hundred bytes
    path = root.rstrip("/") + "/big.ckpt"
    tr.save_checkpoint(big, path, append_dict={"tag": "x"})
    from torchresume.format import reader
    from torchresume.inspection import describe
    store, where = resolve(path)
    f, size = store.open_header(where)
    with f:
        fmt, header, _ = reader.read_header(f, size, path)
        fetched = getattr(getattr(f, "cache", None), "total_requested_bytes", None)
    assert fmt == "torchresume" and header is not None and size > 16 << 20
    if fetched is not None:  # object storage: ranged reads only
        assert fetched < 1 << 20
    d = describe(path)
    assert d.append == {"tag": "x"} and d.tensors[0]["shape"] == [4 << 20] and d.size == size


def test_writer_commit_is_the_only_way_in(root) -> None:
    """Parts stream into a writer; nothing is listed or readable before commit(), all of it after."""
    store, where = resolve(root)
    path = store.join(where, "w.bin")
    writer = store.open_writer(path, size_hint=11)
    writer.write(b"hello ")
    writer.write(memoryview(b"world"))
    assert store.list(where) == [] and store.digest(path) is None
    writer.commit()
    assert [(i.name, i.size) for i in store.list(where)] == [("w.bin", 11)]
    import xxhash
    assert store.digest(path) == xxhash.xxh3_64_hexdigest(b"hello world")


def test_writer_abort_leaves_the_old_file(root) -> None:
    store, where = resolve(root)
    path = store.join(where, "w.bin")
    store.write_atomic(path, [b"old"])
    writer = store.open_writer(path)
    writer.write(b"new bytes that never land")
    writer.abort()
    writer.abort()  # twice is fine
    f, size = store.open_read(path)
    with f:
        assert (f.read(), size) == (b"old", 3)
    assert [i.name for i in store.list(where)] == ["w.bin"]


def test_walk_and_directory_delete(root) -> None:
    store, where = resolve(root)
    store.write_atomic(store.join(where, "d/a.bin"), [b"a"])
    store.write_atomic(store.join(where, "d/sub/b.bin"), [b"bb"])
    assert store.walk(store.join(where, "d")) == {"a.bin": 1, "sub/b.bin": 2}
    assert [(i.name, i.is_dir) for i in store.list(where)] == [("d", True)]
    store.delete(store.join(where, "d"))
    assert store.walk(where) == {}
