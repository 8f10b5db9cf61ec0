"""Lightning, what a new user hit (issue 34 items 3-4, issue 31's run lock): a DataLoader made in
``train_dataloader()`` resumes exactly, the end of training is saved, ModelCheckpoint's parameters
are taken or refused by name, and a second process on a busy directory is refused.

The process tests are few and short (tests/integration/lightning_run.py, 2 epochs of 10 steps):
real SIGKILLs of a real Trainer, and two real processes on one directory. The rest runs a real
Trainer in this process (a tiny model, a few steps).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchresume as tr
from tests.fault.killing import Child, env, random_kills, report
from torchresume.errors import CheckpointConfigError
from torchresume.files import verify
from torchresume.integrations.lightning import TorchResumeCheckpoint

SCRIPT = str(Path(__file__).with_name("lightning_run.py"))
EPOCHS = 2  # 10 steps each


def _hook_cmd(run: Path) -> list[str]:
    return [sys.executable, SCRIPT, str(run), "0", str(EPOCHS), "hook"]


def _finish(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"finished {10 * EPOCHS}" in proc.stdout
    return proc.stderr


def _final(run: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in tr.load_checkpoint(str(run / "final.ckpt")).items() if isinstance(v, torch.Tensor)}


def _batches(run: Path) -> dict[int, str]:
    """The batch each step trained on, as the last run to train that step saw it."""
    return {int(step): digest for step, digest in (line.split() for line in (run / "batches").read_text().splitlines())}


def _all_committed_verify(run: Path) -> None:
    for name in os.listdir(run):
        if name.endswith(".ckpt"):
            assert verify(str(run / name)).valid, name


def test_loader_made_in_train_dataloader_resumes_bitwise_after_sigkills(tmp_path: Path) -> None:
    """The module's train_dataloader() makes a plain DataLoader(shuffle=True) (noise in __getitem__,
    dropout): the callback makes it resumable as Lightning gets it, so three kills end bitwise equal."""
    ref, run = tmp_path / "ref", tmp_path / "killed"
    ref.mkdir()
    run.mkdir()
    _finish(_hook_cmd(ref))
    landed = random_kills(_hook_cmd(run), run, kills=3, seed=34, max_new_steps=6, check=_all_committed_verify)
    report("lightning train_dataloader() loader", landed)
    assert landed["finished"] == 0 and landed["mid-step"] >= 1
    err = _finish(_hook_cmd(run))
    assert "not resumable" not in err  # Lightning's own mid-epoch warning never shows
    final, expected = _final(run), _final(ref)
    assert set(final) == set(expected) and {"rng.torch", "rng.numpy", "rng.python"} <= set(final)
    assert [k for k, t in expected.items() if not torch.equal(final[k], t)] == []
    assert _batches(run) == _batches(ref) and len(_batches(ref)) == 10 * EPOCHS


def test_a_second_process_on_a_busy_directory_is_refused_before_it_reads(tmp_path: Path) -> None:
    """One process: a second Trainer.fit with TorchResumeCheckpoint on the directory a live run
    writes is refused with RunLockedError naming the holder, before it reads or writes anything;
    the first trains on to the end."""
    first = Child([sys.executable, SCRIPT, str(tmp_path), "0", str(EPOCHS)])
    try:
        assert first.wait_new_steps(3)
        first.signal(signal.SIGSTOP)  # alive, holding the lock, writing nothing while the second runs
        before = sorted(os.listdir(tmp_path))
        second = subprocess.run([sys.executable, SCRIPT, str(tmp_path), "0", str(EPOCHS)], env=env(),
                                capture_output=True, text=True, timeout=300)
        assert second.returncode != 0, second.stdout
        holder = f"pid {first.proc.pid} on {socket.gethostname()}, since"
        assert (f"torchresume.errors.RunLockedError: {os.path.realpath(tmp_path)} is in use by another "
                f"training run ({holder}") in second.stderr
        assert "resuming from" not in second.stderr and "step " not in second.stdout
        assert sorted(os.listdir(tmp_path)) == before
        first.signal(signal.SIGCONT)
        assert first.finish() == 0, first.stderr[-3000:]  # the first trains on to the end
        assert f"finished {10 * EPOCHS}" in first.lines
    finally:
        if first.proc.poll() is None:
            first.signal(signal.SIGKILL)
            first.finish()


# -- in this process: a real Trainer, a tiny model -------------------------------------------------

class _Counting(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1)
        self.trained = self.validated = 0

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.trained += 1
        return self.lin(batch[0]).pow(2).mean()

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        self.validated += 1

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(directory: Path, train: Any = None, save_last: bool | None = None, **trainer_args: Any) -> _Counting:
    """10 batches an epoch, saving every 3 steps; resumes with ckpt_path="last"."""
    pl.seed_everything(0, verbose=False)
    model = _Counting()
    data = TensorDataset(torch.randn(40, 2))
    checkpoint = TorchResumeCheckpoint(str(directory), prefix="end", every_n_train_steps=3, keep=None,
                                       save_last=save_last)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                         devices=1, callbacks=[checkpoint], **trainer_args)
    train = DataLoader(data, batch_size=4, shuffle=True) if train is None else train
    trainer.fit(model, train, DataLoader(data, batch_size=20), ckpt_path="last")
    return model


@pytest.mark.parametrize(("limit", "newest"), [({"max_epochs": 1}, "end-1_10.ckpt"),
                                               ({"max_epochs": 3, "max_steps": 7}, "end-1_7.ckpt")])
def test_the_end_of_training_is_saved_and_a_rerun_trains_nothing(tmp_path: Path, limit: dict[str, int],
                                                                 newest: str) -> None:
    """every_n_train_steps=3 does not divide the steps: the end is saved all the same (at the
    epoch's end, or at max_steps mid-epoch), and the finished command run again trains and
    validates nothing and keeps its weights."""
    done = _fit(tmp_path, **limit)
    names = sorted((n for n in os.listdir(tmp_path) if n.endswith(".ckpt")),
                   key=lambda n: [int(x) for x in n[len("end-"):-len(".ckpt")].split("_")])
    assert names[-1] == newest
    again = _fit(tmp_path, **limit)
    assert (again.trained, again.validated) == (0, 0)
    assert all(torch.equal(a, b) for a, b in zip(done.parameters(), again.parameters(), strict=True))


def test_a_killed_writers_leftovers_are_removed_at_the_next_start(tmp_path: Path) -> None:
    """One process: a killed writer's temporary file and an unfinished sharded save's parts of the run
    go at the next fit's start, once it holds the run lock; another run's parts stay."""
    from tests.integration.test_trainer_run_lock import _leave_leftovers
    left = _leave_leftovers(tmp_path, "end", 1)
    (tmp_path / "other-9_2.ckpt").mkdir()
    _fit(tmp_path, max_steps=1)
    names = os.listdir(tmp_path)
    assert not set(left) & set(names) and "other-9_2.ckpt" in names


def test_save_last_false_leaves_the_end_to_the_schedule(tmp_path: Path) -> None:
    _fit(tmp_path, max_epochs=1, save_last=False)
    assert sorted(n for n in os.listdir(tmp_path) if n.endswith(".ckpt")) == [
        "end-1_3.ckpt", "end-1_6.ckpt", "end-1_9.ckpt"]


def test_model_checkpoint_parameters_are_taken_or_refused_by_name(tmp_path: Path) -> None:
    """Lightning 2.6's ModelCheckpoint parameters: those whose meaning carries over are taken; those that
    conflict with torchresume's names, retention or exact resume are refused, each by name."""
    for save_last in (None, True, False, "link"):
        TorchResumeCheckpoint(str(tmp_path), save_last=save_last, save_on_train_epoch_end=True)
    TorchResumeCheckpoint(str(tmp_path), filename=None, save_top_k=-1, save_weights_only=False,
                          save_on_exception=False, auto_insert_metric_name=True, enable_version_counter=False)
    refused = {
        "filename": ("{epoch}-{step}", "TorchResumeCheckpoint(filename='{epoch}-{step}') is not supported: "
                     "torchresume names every checkpoint {prefix}-{epoch}_{step}.ckpt (ls, retention and "
                     "ckpt_path='last' go by that name): drop filename and name the run with prefix="),
        "save_top_k": (3, "TorchResumeCheckpoint(save_top_k=3) is not supported: torchresume's retention decides "
                       "which checkpoints stay (newest first, the newest never deleted): drop save_top_k and "
                       "pass keep=N (or retention policies)"),
        "save_weights_only": (True, "TorchResumeCheckpoint(save_weights_only=True) is not supported: "
                              "ckpt_path='last' resumes the newest checkpoint, which must hold the whole training "
                              "state: drop save_weights_only (load_checkpoint and torchresume convert read the "
                              "weights of any checkpoint)"),
        "save_on_exception": (True, "TorchResumeCheckpoint(save_on_exception=True) is not supported: a save while "
                              "an exception unwinds holds a step that did not finish, and a resume from it would "
                              "skip that step's batch: drop save_on_exception (a run resumes exactly from its last "
                              "scheduled save)"),
        "auto_insert_metric_name": (False, "TorchResumeCheckpoint(auto_insert_metric_name=False) is not supported: "
                                    "it shapes filename=, which torchresume's names replace: drop "
                                    "auto_insert_metric_name"),
        "enable_version_counter": (True, "TorchResumeCheckpoint(enable_version_counter=True) is not supported: a "
                                   "torchresume name is unique to its epoch and step (a save of the same step "
                                   "replaces it): drop enable_version_counter"),
    }
    for name, (value, message) in refused.items():
        with pytest.raises(CheckpointConfigError) as info:
            TorchResumeCheckpoint(str(tmp_path), **{name: value})
        assert str(info.value) == message
    with pytest.raises(CheckpointConfigError, match=r"save_top_k=0\) is not supported"):
        TorchResumeCheckpoint(str(tmp_path), save_top_k=0)


def test_lightning_model_checkpoint_parameters_are_all_answered() -> None:
    """Every parameter of the installed Lightning's ModelCheckpoint is taken or refused by name."""
    import inspect

    from lightning.pytorch.callbacks import ModelCheckpoint
    theirs = set(inspect.signature(ModelCheckpoint.__init__).parameters) - {"self"}
    assert theirs <= set(inspect.signature(TorchResumeCheckpoint.__init__).parameters)


class _Batches:
    """Training data that is no DataLoader and has no state_dict: a resume restarts its epoch."""

    def __init__(self) -> None:
        self.batches = [(torch.randn(4, 2),) for _ in range(5)]

    def __iter__(self) -> Any:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def test_training_data_no_resume_can_continue_is_said_at_start(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                               ) -> None:
    _fit(tmp_path, train=_Batches(), max_steps=1)
    assert capsys.readouterr().err.count(
        "warning: the training data (_Batches) is no torch DataLoader and has no state_dict(): a resume "
        "mid-epoch starts its epoch over and is not exact; train on a DataLoader (TorchResumeCheckpoint makes "
        "it resumable) or on a loader with state_dict()/load_state_dict() (torchdata's StatefulDataLoader)") == 1


def test_persistent_workers_made_in_train_dataloader_are_refused(tmp_path: Path) -> None:
    class Persistent(_Counting):
        def train_dataloader(self) -> DataLoader:
            return DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4, num_workers=1, persistent_workers=True)

    trainer = pl.Trainer(max_steps=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", devices=1, callbacks=[TorchResumeCheckpoint(str(tmp_path), prefix="p")])
    with pytest.raises(CheckpointConfigError, match="persistent_workers=True cannot be resumed exactly"):
        trainer.fit(Persistent())
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".ckpt")]
