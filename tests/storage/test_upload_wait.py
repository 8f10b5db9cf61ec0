"""Waiting for uploads is bounded: a hung upload does not hold a stopping run forever.

The S3 endpoint holds every checkpoint PUT until the test releases it (a
server that accepted the connection and went silent); the waits must give
up with TimeoutError / the "still pending" report, keep the local copy, and
the upload must complete once the server answers again.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
import torch

import torchresume as tr
from tests.storage.faulty_s3 import FaultyS3
from tests.train.helpers import toy_data, toy_model
from torchresume import CheckpointConfig, LambdaCallback, ModelCheckpoint, storage
from torchresume.catalog import list_checkpoints


@pytest.fixture
def holding(bucket, s3_server, monkeypatch) -> Iterator[FaultyS3]:
    server = FaultyS3()
    server.hold_when = lambda method, path, query: method == "PUT" and path.endswith(".ckpt")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    saved = dict(storage._options)
    storage.configure(endpoint_url=server.endpoint)
    try:
        yield server
    finally:
        server.stop()  # releases anything still held
        # the options as they were: an endpoint_url left behind would outlive the test (and key
        # later tests' staging directories by this module's server)
        storage._options.clear()
        storage.configure(**saved)


def _staged(name: str) -> list[str]:
    root = os.environ["TORCHRESUME_STAGING"]
    return [os.path.join(d, name) for d, _, files in os.walk(root) if name in files]


def test_manager_wait_times_out_while_an_upload_hangs(bucket, holding) -> None:
    mgr = tr.CheckpointManager(f"{bucket}/run", model=torch.nn.Linear(2, 2), prefix="run")
    mgr.save(1, 1)
    with pytest.raises(TimeoutError):
        mgr.wait(timeout=0.2)
    assert len(_staged("run-1_1.ckpt")) == 1  # durable locally meanwhile
    assert list_checkpoints(f"{bucket}/run") == []  # not committed remotely yet
    holding.release.set()
    mgr.wait()
    mgr.close()
    assert [e.name for e in list_checkpoints(f"{bucket}/run")] == ["run-1_1.ckpt"]


def test_sigterm_gives_up_waiting_for_a_hung_upload(bucket, holding, monkeypatch, capsys) -> None:
    from torchresume.train import model_checkpoint
    monkeypatch.setattr(model_checkpoint, "UPLOAD_WAIT_S", 0.3)  # instead of 120 s

    def terminate(ctx) -> None:
        if ctx.global_step == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    cb = ModelCheckpoint("toy", f"{bucket}/run", CheckpointConfig(save_checkpoint_steps=100))
    with pytest.raises(SystemExit) as exit_info:
        toy_model().train(2, toy_data(), [cb, LambdaCallback(on_train_step_end=terminate)])
    assert exit_info.value.code == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "uploads still pending after" in err and "the local copies stay in" in err
    assert "SIGTERM at epoch 1 step 5; checkpoint" in err
    assert len(_staged("toy-1_5.ckpt")) == 1
    holding.release.set()
    assert cb.manager is not None
    cb.manager.wait()
    cb.manager.close()
    assert [e.name for e in list_checkpoints(f"{bucket}/run")] == ["toy-1_5.ckpt"]
