"""OnRequestExit and BackupAndRestore restore epoch and step too, and end where an uninterrupted run ends."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from tests.train.helpers import toy_data, toy_model
from torchresume import BackupAndRestore, History, LambdaCallback, OnRequestExit


def _reference() -> tuple[dict[str, torch.Tensor], History]:
    model, h = toy_model(), History()
    model.train(3, toy_data(), [h])
    return model.network.state_dict(), h


def test_backup_and_restore_continues_exactly(tmp_path) -> None:
    expected, h_ref = _reference()

    def crash(ctx) -> None:
        if ctx.global_step == 19:
            raise RuntimeError("power cut")

    h1 = History()
    with pytest.raises(RuntimeError):
        toy_model().train(3, toy_data(), [h1, LambdaCallback(on_train_step_end=crash),
                                          BackupAndRestore(str(tmp_path))])
    assert (tmp_path / "backup.ckpt").exists()
    model, h2 = toy_model(), History()
    model.train(3, toy_data(), [h2, BackupAndRestore(str(tmp_path))])
    for k, v in expected.items():
        assert torch.equal(model.network.state_dict()[k], v), k
    assert h2.state_dict() == h_ref.state_dict()
    assert not (tmp_path / "backup.ckpt").exists()  # deleted once training finished


def test_on_request_exit_saves_and_resumes_epoch_and_step(tmp_path) -> None:
    expected, _ = _reference()

    def send(ctx) -> None:
        if ctx.global_step == 10:
            os.kill(os.getpid(), signal.SIGUSR2)

    cb = OnRequestExit(directory=str(tmp_path), file_name="Net", sig=signal.SIGUSR2)
    first = toy_model()
    summary = first.train(3, toy_data(), [LambdaCallback(on_train_step_end=send), cb])
    assert summary["global_step"] == 10 and not summary["finished"]
    model = toy_model()
    summary = model.train(3, toy_data(), [OnRequestExit(directory=str(tmp_path), sig=signal.SIGUSR2)])
    assert summary["finished"] and summary["resumed_from"] == str(tmp_path / "Net.ckpt")
    for k, v in expected.items():
        assert torch.equal(model.network.state_dict()[k], v), k


def test_arguments() -> None:
    with pytest.raises(ValueError, match="save_freq must be 'epoch' or a positive int, got 0"):
        BackupAndRestore("x", save_freq=0)
    with pytest.raises(ValueError, match="file_name must be a plain file name"):
        OnRequestExit(file_name="a/b")
