"""Lightning with torchresume's plugin: real Trainer runs SIGKILLed mid-epoch and mid-save resume exactly.

Each run (tests/integration/lightning_run.py) trains epochs of 10 steps on a plain
``DataLoader(shuffle=True)`` whose dataset draws noise in ``__getitem__``, with dropout, saving
every 2 steps; a 5-epoch run is killed 7 times per variant (aimed alternately at a checkpoint write
in flight and between writes; 21 kills over the 3 variants, at least 2 mid-save and 2 mid-step in
each) and rerun with the same command (``ckpt_path="last"``). Its weights, optimizer state, final RNG
and the batch trained at every step must equal an uninterrupted run's (with workers and without,
with background saves too).

Under Lightning's DDP strategy (2 torchrun ranks, gloo on CPU) the run trains 12 epochs of 5 steps
per rank into torchresume's sharded checkpoints; the whole process group is SIGKILLed at least 20
times (at least 5 during a save), and each rank's weights, optimizer state, every RNG and batches
must equal an uninterrupted run's. The sharded checkpoints read in one process (the CLI,
``load_checkpoint``) and resume at 1 process.
"""

from __future__ import annotations

import os
import shutil
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
from tests.distributed.launch import torchrun_cmd
from tests.fault.killing import env, random_kills, report
from torchresume.errors import UnstorableStateError, UnsupportedStrategyError
from torchresume.files import describe, verify
from torchresume.integrations.lightning import TorchResumeCheckpoint, TorchResumeIO, resumable

SCRIPT = str(Path(__file__).with_name("lightning_run.py"))
TR = str(Path(sys.executable).with_name("torchresume"))
TOTAL = 30  # 3 epochs of 10 steps


KILL_EPOCHS, KILLS = 5, 7  # the killed runs: 50 steps, 7 kills per variant


def _cmd(run: Path, workers: int, mode: str = "sync", epochs: int = 3) -> list[str]:
    return [sys.executable, SCRIPT, str(run), str(workers), str(epochs), *(["async"] if mode == "async" else [])]


def _finish(run: Path, workers: int, mode: str = "sync", epochs: int = 3) -> str:
    proc = subprocess.run(_cmd(run, workers, mode, epochs), env=env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"finished {10 * epochs}" in proc.stdout
    return proc.stderr


def _final(run: Path, name: str = "final.ckpt") -> dict[str, torch.Tensor]:
    return {k: v for k, v in tr.load_checkpoint(str(run / name)).items() if isinstance(v, torch.Tensor)}


def _batches(run: Path, name: str = "batches") -> dict[int, str]:
    """The batch each step trained on, as the last run to train that step saw it."""
    seen: dict[int, str] = {}
    for line in (run / name).read_text().splitlines():
        step, digest = line.split()
        seen[int(step)] = digest
    return seen


_references: dict[int | tuple[int, int], Path] = {}


def _reference(tmp_path_factory: pytest.TempPathFactory, workers: int, epochs: int = 3) -> Path:
    key = workers if epochs == 3 else (workers, epochs)
    if key not in _references:
        run = tmp_path_factory.mktemp(f"lightning-ref-{workers}-{epochs}")
        _finish(run, workers, epochs=epochs)
        _references[key] = run
    return _references[key]


def _all_committed_verify(run: Path) -> None:
    for name in os.listdir(run):
        if name.endswith(".ckpt"):
            assert verify(str(run / name)).valid, name


def _assert_same_run(run: Path, ref: Path, total: int = TOTAL) -> None:
    final, expected = _final(run), _final(ref)
    assert set(final) == set(expected) and any(k.startswith("optimizer.") for k in final)
    assert {"rng.torch", "rng.numpy", "rng.python"} <= set(final)
    assert [k for k, t in expected.items() if not torch.equal(final[k], t)] == []
    assert _batches(run) == _batches(ref)
    assert len(_batches(ref)) == total


@pytest.mark.parametrize(("workers", "mode"), [(0, "sync"), (2, "sync"), (2, "async")])
def test_sigkills_mid_epoch_and_mid_save_resume_bitwise(tmp_path, tmp_path_factory, workers, mode) -> None:
    cmd = _cmd(tmp_path, workers, mode, KILL_EPOCHS)
    landed = random_kills(cmd, tmp_path, kills=KILLS, seed=21 + workers + (mode == "async"), max_new_steps=4,
                          check=_all_committed_verify)
    report(f"lightning workers={workers} {mode}", landed)
    assert landed["finished"] == 0 and landed["mid-save"] >= 2 and landed["mid-step"] >= 2  # 3 variants: >= 21, 6
    err = _finish(tmp_path, workers, mode, KILL_EPOCHS)
    assert "not resumable" not in err  # Lightning's own mid-epoch warning never shows
    _assert_same_run(tmp_path, _reference(tmp_path_factory, workers, KILL_EPOCHS), 10 * KILL_EPOCHS)


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


# -- DDP: 2 torchrun ranks, sharded checkpoints ---------------------------------------------------

DDP_EPOCHS, DDP_TOTAL = 12, 60  # 5 steps per epoch and rank (80 samples, batch 8, 2 ranks)
DDP_KILLS = 22


def _ddp_cmd(run: Path, workers: int, epochs: int = DDP_EPOCHS, nproc: int = 2) -> list[str]:
    return torchrun_cmd(nproc, [SCRIPT, str(run), str(workers), str(epochs), "ddp"])


def _ddp_finish(run: Path, workers: int, **kwargs: int) -> str:
    proc = subprocess.run(_ddp_cmd(run, workers, **kwargs), env=env(), capture_output=True, text=True,
                          timeout=600, start_new_session=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _ddp_reference(tmp_path_factory: pytest.TempPathFactory, workers: int) -> Path:
    if -1 - workers not in _references:
        run = tmp_path_factory.mktemp(f"lightning-ddp-ref-{workers}")
        out = _ddp_finish(run, workers)
        assert f"finished {DDP_TOTAL}" in out and "forks its" not in out  # forkserver workers: no warning
        _references[-1 - workers] = run
    return _references[-1 - workers]


def _committed_verify(run: Path) -> None:
    """Every committed checkpoint verifies; a directory without its manifest is a save cut short."""
    for name in os.listdir(run):
        if name.endswith(".ckpt") and (run / name / "manifest.json").exists():
            assert verify(str(run / name)).valid, name


def _assert_same_ddp_run(run: Path, ref: Path) -> None:
    for rank in (0, 1):
        final, expected = _final(run, f"final-{rank}.ckpt"), _final(ref, f"final-{rank}.ckpt")
        assert set(final) == set(expected) and {"rng.torch", "rng.numpy", "rng.python"} <= set(final)
        assert [k for k, t in expected.items() if not torch.equal(final[k], t)] == [], rank
        batches = "batches-1" if rank else "batches"
        assert _batches(run, batches) == _batches(ref, batches) and len(_batches(ref, batches)) == DDP_TOTAL


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_ddp_sigkills_of_the_whole_job_resume_bitwise(tmp_path, tmp_path_factory, workers) -> None:
    landed = random_kills(_ddp_cmd(tmp_path, workers), tmp_path, kills=DDP_KILLS, seed=40 + workers,
                          max_new_steps=3, check=_committed_verify, group=True)
    report(f"lightning ddp 2 ranks workers={workers}", landed)
    assert landed["finished"] == 0 and landed["mid-save"] >= 5 and landed["mid-step"] >= 5
    _ddp_finish(tmp_path, workers)
    _assert_same_ddp_run(tmp_path, _ddp_reference(tmp_path_factory, workers))


def test_ddp_checkpoints_are_sharded_and_read_in_one_process(tmp_path_factory) -> None:
    ref = _ddp_reference(tmp_path_factory, 0)
    newest = ref / f"lit-{DDP_EPOCHS}_5.ckpt"
    assert {"dcp_metadata.json", "manifest.json", "rank-00000.safetensors", "rank-00001.safetensors"} <= set(
        os.listdir(newest))
    one = tr.load_checkpoint(str(newest))  # the sharded checkpoint read as one process's file
    final = _final(ref, "final-0.ckpt")
    assert all(torch.equal(one[k], final[k]) for k in final if k.startswith("net."))
    assert one["rank_states.0.lightning.global_step"] == one["rank_states.1.lightning.global_step"] == DDP_TOTAL
    assert any(k.startswith("optimizer.state.") for k in one)  # by position, as torch lays it out

    def cli(*args: str) -> str:
        proc = subprocess.run([TR, *args], capture_output=True, text=True, timeout=120, cwd=ref)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout
    row = next(line for line in cli("ls", ".").splitlines() if line.startswith("lit-"))
    assert row.split()[:3] == [newest.name, str(DDP_EPOCHS), "5"] and row.endswith("valid")
    assert "net.0.weight" in cli("inspect", newest.name)
    assert "OK" in cli("verify", ".")


def test_ddp_checkpoint_resumes_in_one_process(tmp_path, tmp_path_factory) -> None:
    ref = _ddp_reference(tmp_path_factory, 0)
    for name in os.listdir(ref):  # the run at 2 ranks, to go on at 1
        if name.startswith("lit-"):
            shutil.copytree(ref / name, tmp_path / name)
    out = _ddp_finish(tmp_path, 0, epochs=DDP_EPOCHS + 1, nproc=1)
    assert "from a checkpoint of 2" in out and f"finished {DDP_TOTAL + 10}" in out
    assert sorted(_batches(tmp_path)) == list(range(DDP_TOTAL + 1, DDP_TOTAL + 11))  # one more epoch, 10 steps


def test_fsdp_is_refused_by_lightning_on_cpu() -> None:
    with pytest.raises(ValueError, match="requires a GPU accelerator"):
        pl.Trainer(strategy="fsdp", accelerator="cpu", devices=2, logger=False)


def test_what_ddp_cannot_honour_is_refused_with_a_typed_error() -> None:
    from types import SimpleNamespace

    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    from torchresume.integrations.lightning import _own_state, _positions_at, check_strategy
    ddp: Any = SimpleNamespace(strategy=DDPStrategy(), world_size=2)
    check_strategy(ddp, TorchResumeIO(async_save=True, on_busy="skip"))
    with pytest.raises(UnsupportedStrategyError, match=r"write_mb_per_s=50.*drop write_mb_per_s"):
        check_strategy(ddp, TorchResumeIO(async_save=True, write_mb_per_s=50))
    fsdp: Any = SimpleNamespace(strategy=FSDPStrategy(), world_size=2)
    with pytest.raises(UnsupportedStrategyError, match=r"under FSDPStrategy with 2 processes.*strategy='ddp'"):
        check_strategy(fsdp, TorchResumeIO())
    feed = {"feed": "torch.utils.data.DataLoader", "epoch": 1, "batches": 5}
    mid = {"loops": {"fit_loop": {"combined_loader": [{**feed, "consumed": 3}]}}}
    with pytest.raises(UnsupportedStrategyError, match=r"saved by 2 processes mid-epoch.*resume at 2 processes"):
        _positions_at(mid, "lit-1_3.ckpt", 2, 1)
    end = _positions_at({"loops": {"fit_loop": {"combined_loader": [{**feed, "consumed": 5}]}}}, "p", 2, 1)
    assert end["loops"]["fit_loop"]["combined_loader"] == [{**feed, "consumed": 5, "batches": None, "epoch_over": True}]
    saved = {0: {"lightning": {"callbacks": {"c": {"rng": 1, "x": 2}}, "loops": [{"rng": 3, "feed": "f"}]}}}
    assert _own_state(saved, 0, "p") == saved[0]["lightning"]
    assert _own_state(saved, 1, "p") == {"callbacks": {"c": {"x": 2}}, "loops": [{"feed": "f"}]}  # its own seed


def test_io_alone_under_ddp_is_a_typed_error(tmp_path, monkeypatch) -> None:
    from torchresume.world import World
    monkeypatch.setattr(World, "current", classmethod(lambda cls, device=None: cls(0, 2)))  # rank 0 of 2
    with pytest.raises(UnsupportedStrategyError, match="rank 0 alone.*TorchResumeCheckpoint"):
        TorchResumeIO().save_checkpoint({"state_dict": {}}, str(tmp_path / "x.ckpt"))
    assert os.listdir(tmp_path) == []


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


def test_workers_forked_from_a_rank_are_warned_of_once(one_rank_group, tmp_path, capsys) -> None:
    """Under a process group (one rank here), a DataLoader forking its workers is told of the hang
    they risk and how to avoid it, by rank 0, before its first batch; forkserver workers are not."""
    from tests.data.test_loader_state import FORK_HAZARD

    class StopBeforeTheFirstBatch(_WithObjectHparam):
        def on_train_start(self) -> None:  # after the callbacks' on_train_start: no worker ever starts
            raise RuntimeError("stopped before the first batch")

    def fit(context: str) -> str:
        loader = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4, num_workers=2,
                            multiprocessing_context=context)
        trainer = pl.Trainer(max_steps=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                             callbacks=[TorchResumeCheckpoint(str(tmp_path / context), prefix="w")],
                             plugins=[TorchResumeIO()], accelerator="cpu", devices=1)
        with pytest.raises(RuntimeError, match="stopped before the first batch"):
            trainer.fit(StopBeforeTheFirstBatch(0.5), loader)
        return capsys.readouterr().err
    assert fit("fork").count(f"warning: {FORK_HAZARD}") == 1
    assert "forks its" not in fit("forkserver")


def test_validation_workers_forked_from_a_rank_are_warned_of_before_the_sanity_check(
        one_rank_group, tmp_path, capsys) -> None:
    """A validation loader given to fit forks its workers in the sanity check, before training starts:
    the warning comes at set-up, before it."""
    from tests.data.test_loader_state import FORK_HAZARD

    class WithValidation(_WithObjectHparam):
        def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
            pass

    class StopAtTheSanityCheck(pl.Callback):
        def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            raise RuntimeError("stopped before the validation loader's workers start")

    val = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4, num_workers=2, multiprocessing_context="fork")
    trainer = pl.Trainer(max_steps=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[TorchResumeCheckpoint(str(tmp_path), prefix="v"), StopAtTheSanityCheck()],
                         plugins=[TorchResumeIO()], accelerator="cpu", devices=1)
    with pytest.raises(RuntimeError, match="stopped before the validation loader's workers start"):
        trainer.fit(WithValidation(0.5), DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4), val)
    assert capsys.readouterr().err.count(f"warning: {FORK_HAZARD}") == 1


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


def test_not_empty_warning_ignores_only_the_run_lock(tmp_path) -> None:
    """Lightning warns of a checkpoint directory with files in it; the run lock this callback takes
    first is not counted (no warning on a fresh directory), any other file is (the warning stays)."""
    import warnings

    def warned(run: Path) -> list[str]:
        loader = resumable(DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4))
        trainer = pl.Trainer(max_steps=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                             callbacks=[TorchResumeCheckpoint(str(run), prefix="w", every_n_train_steps=1)],
                             plugins=[TorchResumeIO()], accelerator="cpu", devices=1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(_WithObjectHparam(0.5), loader)
        return [str(w.message) for w in caught if "exists and is not empty" in str(w.message)]

    assert warned(tmp_path / "fresh") == []
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("someone else's file\n")
    assert warned(tmp_path / "used") == [f"Checkpoint directory {tmp_path / 'used'} exists and is not empty."]
