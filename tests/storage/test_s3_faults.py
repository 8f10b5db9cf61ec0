"""Object-storage faults: cut-off uploads are never committed, transient errors are retried."""

from __future__ import annotations

import threading
import time

import pytest
import torch

import torchresume as tr
from torchresume.catalog import list_checkpoints
from torchresume.errors import StorageError
from torchresume.storage import remote, resolve


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch) -> None:
    monkeypatch.setattr(remote, "BACKOFF_S", 0.01)


def test_object_without_commit_marker_is_not_listed(bucket, net) -> None:
    tr.save_checkpoint(net, f"{bucket}/run/lenet-1_5.ckpt")
    store, _ = resolve(bucket)
    fs = store.fs  # type: ignore[attr-defined]
    data = fs.cat_file(f"{bucket[5:]}/run/lenet-1_5.ckpt")
    fs.pipe_file(f"{bucket[5:]}/run/lenet-2_5.ckpt", data[: len(data) // 2])  # an upload cut off
    assert [e.name for e in list_checkpoints(f"{bucket}/run")] == ["lenet-1_5.ckpt"]


def test_transient_errors_are_retried(bucket, net, monkeypatch) -> None:
    store, _ = resolve(bucket)
    fs = store.fs  # type: ignore[attr-defined]
    real = fs.open
    calls = {"n": 0}

    def flaky(path, mode="rb", **kw):
        if mode == "wb":
            calls["n"] += 1
            if calls["n"] <= 2:
                raise OSError("503 Service Unavailable (SlowDown)")
        return real(path, mode, **kw)

    monkeypatch.setattr(fs, "open", flaky)
    tr.save_checkpoint(net, f"{bucket}/r/a.ckpt")
    assert calls["n"] == 3  # two failed uploads, then the whole upload again
    assert torch.equal(tr.load_checkpoint(f"{bucket}/r/a.ckpt")["fc2.bias"], net.fc2.bias)


def test_permanent_error_is_one_clear_line(bucket, net, monkeypatch) -> None:
    store, _ = resolve(bucket)
    fs = store.fs  # type: ignore[attr-defined]

    def denied(path, mode="rb", **kw):
        raise PermissionError("AccessDenied: Access Denied")

    monkeypatch.setattr(fs, "open", denied)
    with pytest.raises(StorageError, match=r"upload of s3://.*/a.ckpt failed after 1 attempt\(s\): "
                                           r"PermissionError: AccessDenied"):
        tr.save_checkpoint(net, f"{bucket}/r/a.ckpt")


def test_server_stopped_mid_upload(tmp_path, s3_server, net) -> None:
    """A second real server is stopped while a large checkpoint uploads: nothing is committed."""
    from moto.server import ThreadedMotoServer

    from torchresume.storage.remote import RemoteStorage
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    store = RemoteStorage("s3", {"endpoint_url": f"http://{host}:{port}"})
    store.fs.mkdir("cut")
    big = {"w": torch.randn(48 << 20 >> 2)}  # 48 MiB
    from torchresume.files import encode_state
    encoded = encode_state("tensors", big)
    threading.Timer(0.05, server.stop).start()
    started = time.perf_counter()
    with pytest.raises(StorageError):
        store.write_atomic("s3://cut/run/big-1_1.ckpt", encoded.parts())
    assert time.perf_counter() - started < 60
    server2 = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server2.start()
    try:
        assert [i.name for i in store.list("s3://cut/run")] == []
    finally:
        server2.stop()


def test_missing_s3fs_extra_is_one_line(monkeypatch) -> None:
    import builtins
    real_import = builtins.__import__

    def no_s3fs(name, *args, **kwargs):
        if name == "s3fs":
            raise ImportError("No module named 's3fs'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_s3fs)
    with pytest.raises(ImportError, match=r"s3:// URLs need s3fs: pip install 'torchresume\[s3\]'"):
        remote.filesystem("s3", {})
