"""Lightning with torchresume's plugin: real Trainer runs SIGKILLed mid-epoch and mid-save resume exactly.

Each run (tests/integration/lightning_run.py) trains 3 epochs of 10 steps on a plain
``DataLoader(shuffle=True)`` whose dataset draws noise in ``__getitem__``, with dropout, saving
every 2 steps; it is killed a few times (aimed alternately at a checkpoint write in flight and
between writes) and rerun with the same command (``ckpt_path="last"``). Its weights, optimizer
state, final RNG and the batch trained at every step must equal an uninterrupted run's (with
workers and without, with background saves too).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchresume as tr
from tests.fault.killing import env, random_kills, report
from torchresume.errors import UnstorableStateError
from torchresume.files import describe, verify
from torchresume.integrations.lightning import TorchResumeCheckpoint, TorchResumeIO, resumable

SCRIPT = str(Path(__file__).with_name("lightning_run.py"))
TR = str(Path(sys.executable).with_name("torchresume"))
TOTAL = 30  # 3 epochs of 10 steps


def _cmd(run: Path, workers: int, mode: str = "sync") -> list[str]:
    return [sys.executable, SCRIPT, str(run), str(workers), *(["3", "async"] if mode == "async" else [])]


def _finish(run: Path, workers: int, mode: str = "sync") -> str:
    proc = subprocess.run(_cmd(run, workers, mode), env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"finished {TOTAL}" in proc.stdout
    return proc.stderr


def _final(run: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in tr.load_checkpoint(str(run / "final.ckpt")).items() if isinstance(v, torch.Tensor)}


def _batches(run: Path) -> dict[int, str]:
    """The batch each step trained on, as the last run to train that step saw it."""
    seen: dict[int, str] = {}
    for line in (run / "batches").read_text().splitlines():
        step, digest = line.split()
        seen[int(step)] = digest
    return seen


_references: dict[int, Path] = {}


def _reference(tmp_path_factory: pytest.TempPathFactory, workers: int) -> Path:
    if workers not in _references:
        run = tmp_path_factory.mktemp(f"lightning-ref-{workers}")
        _finish(run, workers)
        _references[workers] = run
    return _references[workers]


def _all_committed_verify(run: Path) -> None:
    for name in os.listdir(run):
        if name.endswith(".ckpt"):
            assert verify(str(run / name)).valid, name


def _assert_same_run(run: Path, ref: Path) -> None:
    final, expected = _final(run), _final(ref)
    assert set(final) == set(expected) and any(k.startswith("optimizer.") for k in final)
    assert [k for k, t in expected.items() if not torch.equal(final[k], t)] == []
    assert _batches(run) == _batches(ref)
    assert len(_batches(ref)) == TOTAL


@pytest.mark.parametrize(("workers", "mode"), [(0, "sync"), (2, "sync"), (2, "async")])
def test_sigkills_mid_epoch_and_mid_save_resume_bitwise(tmp_path, tmp_path_factory, workers, mode) -> None:
    landed = random_kills(_cmd(tmp_path, workers, mode), tmp_path, kills=3, seed=21 + workers, max_new_steps=9,
                          check=_all_committed_verify)
    report(f"lightning workers={workers} {mode}", landed)
    assert landed["mid-step"] + landed["mid-save"] >= 2
    err = _finish(tmp_path, workers, mode)
    assert "not resumable" not in err  # Lightning's own mid-epoch warning never shows
    _assert_same_run(tmp_path, _reference(tmp_path_factory, workers))


def test_damaged_newest_checkpoint_is_skipped(tmp_path, tmp_path_factory) -> None:
    random_kills(_cmd(tmp_path, 0), tmp_path, kills=1, seed=5, max_new_steps=12)
    newest = tr.CheckpointManager(str(tmp_path), prefix="lit").checkpoints()[0]
    with open(newest.path, "r+b") as f:  # one flipped byte in the tensor data
        f.seek(-3, os.SEEK_END)
        byte = f.read(1)
        f.seek(-3, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0xFF]))
    err = _finish(tmp_path, 0)
    assert f"skipping invalid checkpoint {newest.path}" in err
    _assert_same_run(tmp_path, _reference(tmp_path_factory, 0))


def test_cli_reads_lightning_checkpoints(tmp_path_factory) -> None:
    ref = _reference(tmp_path_factory, 0)
    names = sorted(n for n in os.listdir(ref) if n.startswith("lit-"))
    assert names == ["lit-3_10.ckpt", "lit-3_6.ckpt", "lit-3_8.ckpt"]  # keep=3, torchresume names

    def cli(*args: str, rc: int = 0) -> str:
        proc = subprocess.run([TR, *args], capture_output=True, text=True, timeout=120, cwd=ref)
        assert proc.returncode == rc, proc.stderr
        return proc.stdout
    listed = cli("ls", ".").splitlines()
    row = next(line for line in listed if line.startswith("lit-"))  # the newest of the run first
    assert row.split()[:3] == ["lit-3_10.ckpt", "3", "10"] and row.endswith("valid")
    assert "non-finite" not in "\n".join(listed)
    shown = cli("inspect", "lit-3_10.ckpt")
    assert "kind:        lightning" in shown and "state_dict.net.0.weight" in shown
    assert "hyper_parameters.lr = 0.05" in shown
    assert "OK" in cli("verify", ".")
    assert "global_step  28 -> 30" in cli("diff", "lit-3_8.ckpt", "lit-3_10.ckpt", rc=1)
    cli("convert", "lit-3_10.ckpt", str(ref / "copy.safetensors"))
    cli("diff", "lit-3_10.ckpt", str(ref / "copy.safetensors"))


def test_ddp_is_refused_with_a_typed_error_before_any_save(tmp_path) -> None:
    proc = subprocess.run([*_cmd(tmp_path, 0), "1", "ddp"], env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "UnsupportedStrategyError: TorchResumeCheckpoint saves from one process; this trainer runs 2" in proc.stderr
    assert "docs/guides/torchrun.md" in proc.stderr
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".ckpt")]


class _WithObjectHparam(pl.LightningModule):
    def __init__(self, act: object) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.lin = nn.Linear(2, 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.lin(batch[0]).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_unstorable_hyperparameter_is_a_typed_error_naming_its_key(tmp_path) -> None:
    loader = resumable(DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4, shuffle=True))
    trainer = pl.Trainer(max_steps=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[TorchResumeCheckpoint(str(tmp_path), prefix="bad", every_n_train_steps=1)],
                         plugins=[TorchResumeIO()], accelerator="cpu", devices=1)
    with pytest.raises(UnstorableStateError, match=r"'hyper_parameters\.act'.*save_hyperparameters") as info:
        trainer.fit(_WithObjectHparam({1, 2}), loader)
    assert info.value.key == "hyper_parameters.act" and isinstance(info.value, TypeError)
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".ckpt")]  # nothing was written


def test_io_alone_under_lightnings_own_model_checkpoint(tmp_path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    def fit(epochs: int) -> pl.Trainer:
        loader = DataLoader(TensorDataset(torch.randn(16, 2)), batch_size=4)
        trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
                             callbacks=[ModelCheckpoint(str(tmp_path), save_last=True, every_n_train_steps=2)],
                             plugins=[TorchResumeIO()], accelerator="cpu", devices=1)
        trainer.fit(_WithObjectHparam(0.5), loader, ckpt_path="last")
        return trainer
    fit(1)
    assert sorted(os.listdir(tmp_path)) == ["epoch=0-step=4.ckpt", "last.ckpt"]
    assert fit(2).global_step == 8  # resumed from last.ckpt, not started over
    assert sorted(os.listdir(tmp_path)) == ["epoch=1-step=8.ckpt", "last.ckpt"]  # save_top_k=1 removed the old
    for name in os.listdir(tmp_path):
        assert describe(str(tmp_path / name)).kind == "lightning" and verify(str(tmp_path / name)).valid
