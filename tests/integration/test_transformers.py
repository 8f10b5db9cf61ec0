"""The Hugging Face Trainer with torchresume checkpoints (torchresume.integrations.transformers).

Real ``Trainer`` runs (tests/integration/transformers_run.py: a tiny BERT with dropout, 3 epochs of 8
steps on shuffled data, a checkpoint every 2 steps) are SIGKILLed at random points, mid-step and
mid-save, and rerun with the same command (``resume_from_checkpoint=True``); the run must end
with the weights, optimizer state, scheduler and RNG of an uninterrupted run, bit for bit, and
must have trained on the same batches at every step (each sample once per epoch). Values JSON
cannot hold are typed errors naming their key; the installed CLI reads the files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from transformers import TrainerCallback, TrainingArguments
from transformers.trainer_callback import ExportableState

import torchresume as tr
from tests.distributed.launch import Launcher, every_tensor, torchrun_cmd
from tests.fault.killing import env, random_kills, report

sys.path.insert(0, str(Path(__file__).parent))
import transformers_run as workload

SCRIPT = str(Path(__file__).with_name("transformers_run.py"))
TR = str(Path(sys.executable).with_name("torchresume"))
FINAL = "trainer-3_8.ckpt"
# what differs between two runs that trained the same: the directory, and the losses logged in the
# interval a resume cut (the Trainer's loss accumulator starts again at zero)
RUN_DEPENDENT = ("extra.training_args.output_dir", "extra.training_args.logging_dir",
                 "extra.trainer_state.log_history")


def _cmd(run: Path, mode: str = "sync") -> list[str]:
    return [sys.executable, SCRIPT, str(run), mode]


def _finish(run: Path, mode: str = "sync") -> str:
    proc = subprocess.run(_cmd(run, mode), env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"summary {workload.STEPS}" in proc.stdout
    return proc.stdout + proc.stderr


def _seen(run: Path) -> dict[tuple[int, int], list[int]]:
    """The batch each rank trained at each global step: the last run to train a step is the one
    that went on."""
    steps: dict[tuple[int, int], list[int]] = {}
    for line in (run / "seen").read_text().splitlines():
        step, rank, *ids = map(int, line.split())
        steps[step, rank] = ids
    return steps


def _tensors(path: Path) -> dict[str, Any]:
    return tr.load_checkpoint(str(path))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("hf-reference")
    _finish(run)
    return run


def _assert_same_run(run: Path, ref: Path) -> None:
    seen, expected = _seen(run), _seen(ref)
    assert seen == expected, "the resumed run trained on other batches than the uninterrupted one"
    ranks = 1 + max(rank for _, rank in seen)
    per_epoch = workload.SAMPLES // workload.BATCH // ranks
    for epoch in range(workload.EPOCHS):
        ids = [i for step in range(epoch * per_epoch + 1, (epoch + 1) * per_epoch + 1)
               for rank in range(ranks) for i in seen[step, rank]]
        assert sorted(ids) == list(range(workload.SAMPLES)), f"epoch {epoch + 1}: not every sample exactly once"
    got, want = _tensors(run / FINAL), _tensors(ref / FINAL)
    assert set(got) == set(want)
    for key, value in want.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(got[key], value), f"{key} differs from the uninterrupted run"
        elif not key.startswith(RUN_DEPENDENT):
            assert np.array_equal(got[key], value) if isinstance(value, np.ndarray) else got[key] == value, key
    assert any(k.startswith("optimizer.state.") for k in want) and "rng.torch" in want


@pytest.mark.parametrize("mode,kills", [("sync", 4), ("async", 2)], ids=["sync", "async"])
def test_sigkills_then_same_command_is_bitwise_exact(mode: str, kills: int, reference: Path,
                                                     tmp_path: Path) -> None:
    run = tmp_path / "run"
    landed = random_kills(_cmd(run, mode), run, kills, seed=22 + kills, max_new_steps=8)
    report(f"transformers Trainer ({mode})", landed)
    assert landed["mid-step"] + landed["mid-save"] >= 1
    _finish(run, mode)
    _assert_same_run(run, reference)
    names = sorted(p.name for p in run.iterdir() if not p.name.startswith("."))
    checkpoints = [n for n in names if n != "seen"]
    assert all(n.startswith("trainer-") and n.endswith(".ckpt") for n in checkpoints), names  # no pickle beside
    # save_total_limit=2, also after a kill between the last commit and its retention (deletes in a
    # background thread): the rerun, with nothing left to save, applies it when it resumes.
    assert checkpoints == ["trainer-3_6.ckpt", FINAL], names


def test_a_damaged_newest_checkpoint_is_skipped_and_named(reference: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for name in ("seen", "trainer-3_6.ckpt", FINAL):
        (run / name).write_bytes((reference / name).read_bytes())
    (run / "seen").write_text("\n".join(line for line in (reference / "seen").read_text().splitlines()
                                        if int(line.split()[0]) <= 22) + "\n")
    data = bytearray((run / FINAL).read_bytes())
    data[-5] ^= 0xFF  # a flipped bit in a tensor: its checksum fails
    os.chmod(run / FINAL, 0o600)
    (run / FINAL).write_bytes(bytes(data))
    out = _finish(run)
    assert "skipping invalid checkpoint" in out and FINAL in out
    assert f"resuming from {run / 'trainer-3_6.ckpt'}" in out
    _assert_same_run(run, reference)  # steps 23 and 24 trained again, from trainer-3_6.ckpt


class _Noting(TrainerCallback):
    """Logs a value JSON cannot hold into the trainer state."""

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        state.log_history.append({"step": state.global_step, "note": {"a", "b"}})


class _Exporting(TrainerCallback, ExportableState):
    """A Hugging Face stateful callback whose state() holds an object."""

    def state(self) -> dict[str, Any]:
        return {"args": {}, "attributes": {"best": object()}}


class _Counting(TrainerCallback):
    """A torchresume-style stateful callback (state_dict/load_state_dict) holding a function."""

    def state_dict(self) -> dict[str, Any]:
        return {"count": 1, "hook": print}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@pytest.mark.parametrize("callback,key", [
    (_Noting(), "trainer_state['log_history'][0]['note']"),
    (_Exporting(), "callback _Exporting's state()['attributes']['best']"),
    (_Counting(), "callbacks._Counting.hook"),
], ids=["log-history", "exportable-callback", "stateful-callback"])
def test_a_value_json_cannot_hold_is_a_typed_error_naming_its_key(callback: TrainerCallback, key: str,
                                                                   tmp_path: Path) -> None:
    trainer = workload.Recording(model=workload.model(), args=workload.arguments(str(tmp_path)),
                                 train_dataset=workload.dataset(), callbacks=[callback])
    with pytest.raises(tr.UnstorableStateError) as caught:
        trainer.train(resume_from_checkpoint=True)
    assert key in str(caught.value)
    assert isinstance(caught.value, TypeError)
    assert not list(tmp_path.glob("*.ckpt")), "nothing is committed"


@pytest.mark.parametrize("option", ["load_best_model_at_end", "save_only_model"])
def test_an_option_these_checkpoints_do_not_honour_is_refused_before_training(option: str, tmp_path: Path) -> None:
    args = TrainingArguments(str(tmp_path), eval_strategy="steps", eval_steps=2, save_steps=2, report_to=[],
                             use_cpu=True, **{option: True})
    with pytest.raises(tr.CheckpointConfigError, match=f"{option}=True.*set {option}=False"):
        workload.Recording(model=workload.model(), args=args, train_dataset=workload.dataset())


def _cli(*args: str, check: int = 0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([TR, *args], capture_output=True, text=True, timeout=300, env=env())
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == check, (args, proc.stdout, proc.stderr)
    return proc


def test_the_cli_reads_trainer_checkpoints(reference: Path, tmp_path: Path) -> None:
    older, final = str(reference / "trainer-3_6.ckpt"), str(reference / FINAL)
    described = json.loads(_cli("inspect", final, "--json").stdout)
    assert described["kind"] == "train_state" and described["info"]["global_step"] == workload.STEPS
    assert described["info"]["trainer"] == "transformers"
    assert "OK" in _cli("verify", str(reference)).stdout
    listed = _cli("ls", str(reference)).stdout.splitlines()
    assert FINAL in listed[1] and "trainer-3_6.ckpt" in listed[2]
    assert "optimizer.state.0.exp_avg" in _cli("diff", older, final, check=1).stdout
    out = tmp_path / "hub"
    out.mkdir()
    _cli("convert", final, str(out / "model.safetensors"), "--to", "safetensors")
    from safetensors import safe_open
    from transformers import BertForSequenceClassification
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}  # plain safetensors, no training state
    workload.model().config.save_pretrained(out)
    loaded = BertForSequenceClassification.from_pretrained(out).state_dict()
    saved = _tensors(reference / FINAL)
    assert all(torch.equal(value, saved[name]) for name, value in loaded.items())


def _running(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return False


def _reap(pids: list[int]) -> None:
    """Until the killed ranks are gone (or zombies), so no orphan writes into the next run."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        alive = [p for p in pids if _running(p)]
        if not alive:
            return
        time.sleep(0.05)
    raise AssertionError(f"ranks {pids} still run after SIGKILL")


def test_torchrun_two_processes_write_sharded_checkpoints_and_resume_bitwise(tmp_path: Path) -> None:
    """2 processes (gloo on CPU): sharded checkpoints of the torchrun path; the job killed whole
    (launcher and ranks) mid-step and again as a save begins, then rerun, ends bitwise equal."""
    def job(run: Path) -> Launcher:
        return Launcher(torchrun_cmd(2, [SCRIPT, str(run), "sync"]), tmp_path)

    straight = job(tmp_path / "straight")
    assert straight.finish() == 0, straight.output()[-3000:]
    run = tmp_path / "run"
    for at in ("step 3", "step 6"):  # no save after step 3; step 6's save starts as it is printed
        killed = job(run)
        assert killed.wait_for(at), killed.output()[-3000:]
        ranks = killed.workers()  # the Trainer's ranks outlive a killed launcher: kill them too
        assert len(ranks) == 2
        for pid in ranks:
            os.kill(pid, signal.SIGKILL)
        os.killpg(killed.proc.pid, signal.SIGKILL)
        killed.finish()
        _reap(ranks)
    last = job(run)
    assert last.finish() == 0, last.output()[-3000:]
    assert "resuming from" in last.output()
    assert _seen(run) == _seen(tmp_path / "straight")
    final = "trainer-3_4.ckpt"  # 4 steps an epoch at 2 processes
    assert (run / final).is_dir(), "a sharded checkpoint is a directory of parts"
    got, want = every_tensor(run / final), every_tensor(tmp_path / "straight" / final)
    assert got.keys() == want.keys() and any("rng" in k for k in want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    _cli("verify", str(run))
    _cli("convert", str(run / final), str(tmp_path / "one.ckpt"))
    _cli("convert", str(run / final), str(tmp_path / "model.safetensors"), "--to", "safetensors")
    from safetensors.torch import load_file
    assert load_file(str(tmp_path / "model.safetensors")).keys() == workload.model().state_dict().keys()
