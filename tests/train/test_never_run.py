"""Behaviour no test used to run: best-checkpoint keeping, -best files on resume, EarlyStopping
state across a resume, close() re-raising background errors, the progress bar on a terminal,
and resuming a dataset that cannot seek."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import sys
import termios
import threading

import pytest
import torch

import torchresume as tr
from tests.train.helpers import toy_data, toy_model
from torchresume import Callback, CheckpointConfig, EarlyStopping, LambdaCallback, ModelCheckpoint, inspection
from torchresume.catalog import list_checkpoints


class ScriptedMetric(Callback):
    """Replaces an eval metric by a scripted value per epoch (placed before the callbacks that read it)."""

    def __init__(self, name: str, values: dict[int, float]) -> None:
        self.name, self.values = name, values

    def on_eval_end(self, ctx) -> None:
        ctx.metrics[self.name] = self.values[ctx.epoch]


def _best_files(directory) -> dict[str, float]:
    out = {}
    for name in sorted(os.listdir(directory)):
        if "-best-" in name and name.endswith(".ckpt"):
            out[name] = inspection.describe(str(directory / name)).info["metrics"]
    return out


@pytest.mark.parametrize(("mode", "metric", "values", "keep", "expected"), [
    # max: saved when better than every earlier value (epochs 1, 2); the best is epoch 2
    ("max", "acc", {1: 0.5, 2: 0.9, 3: 0.7, 4: 0.8}, 1, {"toy-best-2_8.ckpt": 0.9}),
    # min: saved at epochs 1, 2, 4; the two best are 2 and 4
    ("min", "loss", {1: 0.9, 2: 0.3, 3: 0.5, 4: 0.2}, 2, {"toy-best-2_8.ckpt": 0.3, "toy-best-4_8.ckpt": 0.2}),
])
def test_best_checkpoint_keeps_the_best(tmp_path, mode, metric, values, keep, expected) -> None:
    cfg = CheckpointConfig(save_checkpoint_steps=8, monitor=metric, mode=mode, keep_best_max=keep)
    cb = ModelCheckpoint("toy", str(tmp_path), cfg)
    toy_model().fit(4, toy_data(), toy_data(), callbacks=[ScriptedMetric(metric, values), cb])
    kept = {name: m[metric] for name, m in _best_files(tmp_path).items()}
    assert kept == expected
    assert cb.best == (max if mode == "max" else min)(values.values())


def test_best_files_are_skipped_by_resume(tmp_path) -> None:
    cfg = CheckpointConfig(save_checkpoint_steps=8, monitor="acc", keep_best_max=1)
    values = {1: 0.5, 2: 0.6, 3: 0.7}
    toy_model().fit(2, toy_data(), toy_data(), callbacks=[ScriptedMetric("acc", values),
                                                          ModelCheckpoint("toy", str(tmp_path), cfg)])
    newest = list_checkpoints(str(tmp_path))[0]
    assert newest.name == "toy-best-2_8.ckpt"  # saved after the step's checkpoint: the newest file
    summary = toy_model().fit(3, toy_data(), toy_data(), callbacks=[
        ScriptedMetric("acc", values), ModelCheckpoint("toy", str(tmp_path), cfg)], resume="auto")
    assert summary["resumed_from"] == str(tmp_path / "toy-2_8.ckpt")
    assert summary["finished"] and summary["global_step"] == 24


def test_early_stopping_state_is_restored_on_resume(tmp_path) -> None:
    values = {e: (0.5 if e == 1 else 0.6) for e in range(1, 7)}  # improves once, then a plateau

    def callbacks(es: EarlyStopping, *extra: Callback) -> list[Callback]:
        cfg = CheckpointConfig(save_checkpoint_steps=8, keep_checkpoint_max=10)
        return [ScriptedMetric("acc", values), es, ModelCheckpoint("toy", str(tmp_path / "run"), cfg), *extra]

    ref_es = EarlyStopping(monitor="eval_acc", patience=1)
    ref = toy_model().fit(6, toy_data(), toy_data(), callbacks=[ScriptedMetric("acc", values), ref_es])
    assert (ref["epoch"], ref_es.stopped_epoch) == (4, 4)

    stop_after_3 = LambdaCallback(on_train_epoch_end=lambda c: c.request_stop() if c.epoch == 3 else None)
    toy_model().fit(6, toy_data(), toy_data(), callbacks=callbacks(EarlyStopping("eval_acc", patience=1),
                                                                  stop_after_3))
    es = EarlyStopping(monitor="eval_acc", patience=1)
    resumed = toy_model().fit(6, toy_data(), toy_data(), callbacks=callbacks(es), resume="auto")
    assert resumed["resumed_from"] is not None
    assert (resumed["epoch"], es.stopped_epoch) == (4, 4)  # a fresh counter would stop at epoch 5
    assert es.state_dict() == ref_es.state_dict()


def test_manager_close_reraises_a_background_error(tmp_path) -> None:
    target = tmp_path / "ckpts"
    mgr = tr.CheckpointManager(str(target), model=torch.nn.Linear(2, 2), prefix="run", async_save=True)
    mgr.acquire_lock()  # the run's directory exists now
    (target / "run-1_1.ckpt").mkdir()  # a directory where the file should go: the background rename fails
    mgr.save(1, 1)
    with pytest.raises(tr.AsyncSaveError, match=r"background save of .*run-1_1.ckpt failed") as err:
        mgr.close()
    assert isinstance(err.value.__cause__, OSError)

    ok = tr.CheckpointManager(str(tmp_path / "fine"), model=torch.nn.Linear(2, 2), prefix="run", async_save=True)
    ok.save(1, 1)
    ok.close()  # waits for the write
    assert (tmp_path / "fine" / "run-1_1.ckpt").exists()


def test_progress_bar_on_a_terminal_only(monkeypatch, capsys) -> None:
    """stderr is a pseudo-terminal (120 columns): Model adds a tqdm bar per epoch; on a pipe it does not."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the terminal's last writer closed it
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    terminal = os.fdopen(slave, "w", buffering=1)
    assert terminal.isatty()
    monkeypatch.setattr(sys, "stderr", terminal)
    toy_model().train(2, toy_data(n=400), [])  # 50 steps per epoch
    monkeypatch.undo()
    terminal.close()
    reader.join(timeout=60)
    os.close(master)
    tty = b"".join(chunks).decode(errors="replace")
    for epoch in (1, 2):
        assert f"epoch {epoch}: " in tty, tty
    assert "40/50" in tty and "mean loss of 20 steps" in tty, tty  # refreshed every 20 steps, with the mean loss
    assert "mean loss of 30 steps" not in tty  # a new epoch's bar starts its own mean

    capsys.readouterr()
    toy_model().train(1, toy_data(n=400), [])  # stderr captured by pytest: not a terminal
    assert "epoch 1: " not in capsys.readouterr().err


def test_resume_of_a_dataset_that_cannot_seek(tmp_path, capsys) -> None:
    batches = list(toy_data())  # a plain list: no sampler, no state_dict; 8 batches, same order each epoch
    ref = toy_model()
    ref.train(2, batches)
    expected = {k: v.clone() for k, v in ref.network.state_dict().items()}

    def boom(ctx) -> None:
        if ctx.global_step == 11:
            raise RuntimeError("crash in epoch 2 after 3 steps")

    cfg = CheckpointConfig(save_checkpoint_steps=100, exception_save=True)
    with pytest.raises(RuntimeError, match="crash in epoch 2"):
        toy_model().train(2, batches, [ModelCheckpoint("toy", str(tmp_path), cfg),
                                       LambdaCallback(on_train_step_begin=boom)])
    capsys.readouterr()
    model = toy_model()
    summary = model.train(2, batches, [ModelCheckpoint("toy", str(tmp_path), cfg)], resume="auto")
    assert summary["finished"] and summary["global_step"] == 16
    assert "warning" not in capsys.readouterr().err  # a list resumes exactly: it is indexed, not re-iterated
    for k, v in expected.items():
        assert torch.equal(model.network.state_dict()[k], v), k
