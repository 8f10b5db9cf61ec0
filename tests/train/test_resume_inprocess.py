"""Exact resume inside one process: breakpoints, signals in custom loops, weights-only files."""

from __future__ import annotations

import os
import signal

import pytest
import torch

import torchresume as tr
from tests.train.helpers import toy_data, toy_model
from torchresume import CheckpointConfig, CheckpointManager, History, LambdaCallback, ModelCheckpoint, inspection


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.network.state_dict().items()}


def test_exception_breakpoint_resumes_exactly(tmp_path) -> None:
    ref = toy_model()
    h_ref = History()
    ref.train(3, toy_data(), [h_ref])
    expected = _weights(ref)

    cfg = CheckpointConfig(save_checkpoint_steps=100, exception_save=True)

    def boom(ctx) -> None:
        if ctx.global_step == 12:  # step 13 (epoch 2, step 5) is starting
            raise RuntimeError("bug at step 13")

    with pytest.raises(RuntimeError, match="bug at step 13"):
        toy_model().train(3, toy_data(), [ModelCheckpoint("toy", str(tmp_path), cfg),
                                          LambdaCallback(on_train_step_begin=boom), History()])
    bp = tmp_path / "toy-2_5_breakpoint.ckpt"
    assert bp.exists()
    assert inspection.describe(str(bp)).info["global_step"] == 12
    resumed, h = toy_model(), History()
    summary = resumed.train(3, toy_data(), [ModelCheckpoint("toy", str(tmp_path), cfg), h], resume="auto")
    assert summary["resumed_from"] == str(bp)
    for k, v in expected.items():
        assert torch.equal(resumed.network.state_dict()[k], v), k
    assert h.state_dict() == h_ref.state_dict()


def test_resume_path_and_finished(tmp_path, capsys) -> None:
    cfg = CheckpointConfig(save_checkpoint_steps=4)
    toy_model().train(2, toy_data(), [ModelCheckpoint("toy", str(tmp_path), cfg)])
    summary = toy_model().train(2, toy_data(), [ModelCheckpoint("toy", str(tmp_path), cfg)], resume="auto")
    assert summary["already_finished"]
    assert "training already finished (16/16 steps" in capsys.readouterr().out


def test_weights_only_checkpoint_resumes_what_it_holds(tmp_path, capsys) -> None:
    src = toy_model()
    src.train(1, toy_data(seed=3))  # weights that differ from a fresh toy_model's
    path = str(tmp_path / "w.ckpt")
    tr.save_checkpoint(src.network, path)
    expected = toy_model()  # the same weights put in by hand, then one epoch from there
    tr.load_param_into_net(expected.network, tr.load_checkpoint(path))
    expected.train(1, toy_data())
    model = toy_model()
    model.train(1, toy_data(), resume=path)
    assert "holds no optimizer, sampler, rng state" in capsys.readouterr().err
    for k, v in _weights(expected).items():
        assert torch.equal(model.network.state_dict()[k], v), k
    assert not torch.equal(model.network[0].weight, toy_model().network[0].weight)


def test_invalid_newest_is_skipped_and_reported(tmp_path, capsys) -> None:
    cfg = CheckpointConfig(save_checkpoint_steps=4, keep_checkpoint_max=10)
    toy_model().train(1, toy_data(), [ModelCheckpoint("toy", str(tmp_path), cfg)])
    newest = tmp_path / "toy-1_8.ckpt"
    data = bytearray(newest.read_bytes())
    data[-3] ^= 0xFF
    os.chmod(newest, 0o600)
    newest.write_bytes(bytes(data))
    summary = toy_model().train(1, toy_data(), [ModelCheckpoint("toy", str(tmp_path), cfg)], resume="auto")
    assert summary["resumed_from"] == str(tmp_path / "toy-1_4.ckpt")
    assert "skipping invalid checkpoint" in capsys.readouterr().err


def test_manager_guard_saves_on_signal_and_exception(tmp_path) -> None:
    model = toy_model()
    mgr = CheckpointManager(str(tmp_path), model=model.network, optimizer=model.optimizer, prefix="run")
    with pytest.raises(SystemExit) as exit_info, mgr.guard() as guard:
        for step in range(1, 100):
            if step == 3:
                os.kill(os.getpid(), signal.SIGTERM)
            guard.step_done(epoch=1, step=step)
    assert exit_info.value.code == 128 + signal.SIGTERM
    assert (tmp_path / "run-1_3.ckpt").exists()
    with pytest.raises(ZeroDivisionError), mgr.guard() as guard:
        guard.step_done(epoch=2, step=7)
        _ = 1 / 0
    assert (tmp_path / "run-2_7_breakpoint.ckpt").exists()
    fresh = toy_model()
    mgr2 = CheckpointManager(str(tmp_path), model=fresh.network, optimizer=fresh.optimizer, prefix="run")
    info = mgr2.restore_latest()
    assert info is not None and info["breakpoint"] and info["epoch"] == 2


def test_guard_records_the_true_global_step(tmp_path) -> None:
    model = toy_model()
    mgr = CheckpointManager(str(tmp_path), model=model.network, optimizer=model.optimizer, prefix="run")
    with pytest.raises(ZeroDivisionError), mgr.guard() as guard:
        for epoch in (1, 2):
            for step in range(1, 9):
                if (epoch, step) == (2, 6):
                    _ = 1 / 0
                guard.step_done(epoch=epoch, step=step)
    info = inspection.describe(str(tmp_path / "run-2_5_breakpoint.ckpt")).info
    assert (info["epoch"], info["step"], info["global_step"]) == (2, 5, 13)
    fresh = toy_model()
    mgr2 = CheckpointManager(str(tmp_path), model=fresh.network, optimizer=fresh.optimizer, prefix="run")
    assert mgr2.restore_latest()["global_step"] == 13
    with mgr2.guard() as guard:
        guard.step_done(epoch=2, step=6)
        path = mgr2.save(2, 6)
    assert inspection.describe(path).info["global_step"] == 14


def test_fit_of_a_finished_run_returns_its_epoch(tmp_path) -> None:
    cfg = CheckpointConfig(save_checkpoint_steps=4)
    first = toy_model().fit(2, toy_data(), None, callbacks=[ModelCheckpoint("toy", str(tmp_path), cfg)])
    again = toy_model().fit(2, toy_data(), None, callbacks=[ModelCheckpoint("toy", str(tmp_path), cfg)],
                            resume="auto")
    assert again["already_finished"]
    assert (again["epoch"], again["global_step"]) == (first["epoch"], first["global_step"])
    assert again["epoch"] == 2


def test_resume_takes_a_directory_or_a_manager(tmp_path) -> None:
    """Model.train(resume=...) needs no ModelCheckpoint to find a run: a directory or a manager will do."""
    import torchresume as tr
    from tests.train.helpers import toy_data, toy_model
    directory = str(tmp_path / "run")
    model = toy_model()
    model.train(1, toy_data(), callbacks=[tr.ModelCheckpoint("toy", directory,
                                                             tr.CheckpointConfig(save_checkpoint_steps=2))])
    for resume in (directory, tr.CheckpointManager(directory, keep=None)):
        again = toy_model(lr=0.5)
        summary = again.train(1, toy_data(), resume=resume)
        assert summary["already_finished"] and summary["resumed_from"].endswith("toy-1_8.ckpt")
        for a, b in zip(model.network.parameters(), again.network.parameters(), strict=True):
            assert torch.equal(a, b)


def _flip_middle(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    os.chmod(path, 0o600)
    path.write_bytes(bytes(data))


def test_a_run_whose_every_checkpoint_is_damaged_stops(tmp_path, capsys) -> None:
    """Never a silent fresh start: one error naming every file and resume='none'; nothing new written."""
    from torchresume.errors import DamagedRunError
    cfg = CheckpointConfig(save_checkpoint_steps=4, keep_checkpoint_max=10)
    toy_model().train(1, toy_data(), [ModelCheckpoint("toy", str(tmp_path), cfg)])
    for name in ("toy-1_4.ckpt", "toy-1_8.ckpt"):
        _flip_middle(tmp_path / name)
    before = sorted(os.listdir(tmp_path))
    capsys.readouterr()
    with pytest.raises(DamagedRunError) as exc:
        toy_model().train(2, toy_data(), [ModelCheckpoint("toy", str(tmp_path), cfg)], resume="auto")
    message = str(exc.value)
    assert message.startswith(f"{tmp_path}: no checkpoint of the run can be read (toy-1_8.ckpt, toy-1_4.ckpt; "
                              "the newest: ")
    assert message.endswith("start over with resume='none' (the damaged files are kept)")
    assert sorted(os.listdir(tmp_path)) == before  # no toy_1 run opened
    assert capsys.readouterr().err == ""  # the error is the one line


def test_resuming_from_a_named_directory_without_checkpoints_is_an_error(tmp_path) -> None:
    from torchresume.errors import CheckpointNotFoundError
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointNotFoundError, match=f"^{empty} holds no checkpoint to resume from; name a "
                       "directory or file that holds one, or start over with resume='none'$"):
        toy_model().train(1, toy_data(), resume=str(empty))
