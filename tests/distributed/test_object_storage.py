"""Sharded save and restore on object storage (a moto S3 server on 127.0.0.1): every rank uploads its parts."""

from __future__ import annotations

from pathlib import Path

from tests.distributed.conftest import torchrun
from tests.storage.conftest import bucket, s3_server  # noqa: F401 - the fixtures
from torchresume import storage


def test_ddp_save_restore_on_s3(bucket: str, tmp_path: Path) -> None:  # noqa: F811
    url, out = bucket + "/run", tmp_path / "out"
    saved = torchrun(2, "ddp_save", url, out)
    assert saved.returncode == 0, saved.output
    path = saved.results[0]["path"]
    assert path == url + "/ddp-1_2.ckpt" == saved.results[1]["newest"]
    s3, _ = storage.resolve(url)
    names = sorted(i.name for i in s3.list(path))
    assert {"manifest.json", "dcp_metadata.json", "rank-00000.safetensors", "rank-00001.safetensors"} <= set(names)
    restored = torchrun(2, "ddp_restore", url, out)
    assert restored.returncode == 0, restored.output
    for res in restored.results.values():
        assert res["path"] == path
        assert res["model_equal"] and res["optim_equal"] and res["rank_states_equal"] == [True, True], res
