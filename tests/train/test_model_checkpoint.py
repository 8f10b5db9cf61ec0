"""Naming, the _N rule, retention, train-end save, append_info, exception_save, async, best."""

from __future__ import annotations

import json
import os

import pytest
import torch

import torchresume as tr
from tests.train.helpers import toy_data, toy_model
from torchresume import CheckpointConfig, LambdaCallback, ModelCheckpoint, inspection
from torchresume.files import verify


def _ckpts(d) -> list[str]:
    return sorted(f for f in os.listdir(d) if f.endswith(".ckpt"))


def test_naming_and_graph_file(tmp_path) -> None:
    cb = ModelCheckpoint("toy", str(tmp_path), CheckpointConfig(save_checkpoint_steps=8, keep_checkpoint_max=10))
    toy_model().train(2, toy_data(), [cb])  # 8 steps per epoch
    assert _ckpts(tmp_path) == ["toy-1_8.ckpt", "toy-2_8.ckpt"]
    graph = json.loads((tmp_path / "toy-graph.json").read_text())
    assert {"name": "0.weight", "shape": [16, 4], "dtype": "torch.float32"} in graph["parameters"]
    assert cb.latest_ckpt_file_name == str(tmp_path / "toy-2_8.ckpt")


def test_second_fresh_run_gets_prefix_1_then_2(tmp_path) -> None:
    cfg = CheckpointConfig(save_checkpoint_steps=8)
    for _ in range(3):
        toy_model().train(1, toy_data(), [ModelCheckpoint("toy", str(tmp_path), cfg)], resume="none")
    assert _ckpts(tmp_path) == ["toy-1_8.ckpt", "toy_1-1_8.ckpt", "toy_2-1_8.ckpt"]
    assert (tmp_path / "toy_2-graph.json").exists()


def test_a_run_that_never_committed_leaves_its_prefix_free(tmp_path) -> None:
    """Killed before its first save (only the graph file left), twice: the restart is still run 'toy'."""
    (tmp_path / "toy-graph.json").write_text('{"stale": true}')
    cfg = CheckpointConfig(save_checkpoint_steps=8)
    toy_model().train(1, toy_data(), [ModelCheckpoint("toy", str(tmp_path), cfg)], resume="auto")
    assert _ckpts(tmp_path) == ["toy-1_8.ckpt"]
    assert "parameters" in json.loads((tmp_path / "toy-graph.json").read_text())  # this network's graph


def test_keep_checkpoint_max_deletes_oldest_after_commit(tmp_path) -> None:
    cfg = CheckpointConfig(save_checkpoint_steps=2, keep_checkpoint_max=3)
    toy_model().train(2, toy_data(), [ModelCheckpoint("toy", str(tmp_path), cfg)])
    assert _ckpts(tmp_path) == ["toy-2_4.ckpt", "toy-2_6.ckpt", "toy-2_8.ckpt"]


def test_retention_never_touches_other_prefixes(tmp_path) -> None:
    cfg = CheckpointConfig(save_checkpoint_steps=4, keep_checkpoint_max=1)
    toy_model().train(1, toy_data(), [ModelCheckpoint("toy", str(tmp_path), cfg)])
    toy_model().train(1, toy_data(), [ModelCheckpoint("toy", str(tmp_path), cfg)], resume="none")
    assert _ckpts(tmp_path) == ["toy-1_8.ckpt", "toy_1-1_8.ckpt"]


def test_train_end_forces_a_save_of_the_last_step(tmp_path) -> None:
    cfg = CheckpointConfig(save_checkpoint_steps=5, keep_checkpoint_max=10)
    toy_model().train(1, toy_data(), [ModelCheckpoint("toy", str(tmp_path), cfg)])
    assert _ckpts(tmp_path) == ["toy-1_5.ckpt", "toy-1_8.ckpt"]


def test_append_info_in_file(tmp_path) -> None:
    cfg = CheckpointConfig(save_checkpoint_steps=8, append_info=["epoch_num", "step_num", {"tag": "v1"}])
    toy_model().train(1, toy_data(), [ModelCheckpoint("toy", str(tmp_path), cfg)])
    d = tr.load_checkpoint(str(tmp_path / "toy-1_8.ckpt"))
    assert (d["epoch_num"], d["step_num"], d["tag"]) == (1, 8, "v1")


def test_saved_network_saves_only_that_network(tmp_path) -> None:
    model = toy_model()
    cfg = CheckpointConfig(save_checkpoint_steps=8, saved_network=model.network[0])
    model.train(1, toy_data(), [ModelCheckpoint("toy", str(tmp_path), cfg)])
    assert set(tr.load_checkpoint(str(tmp_path / "toy-1_8.ckpt"))) == {"weight", "bias"}


def test_exception_save_writes_breakpoint_and_reraises(tmp_path) -> None:
    def boom(ctx) -> None:
        if ctx.global_step == 11:
            raise RuntimeError("user bug")

    cfg = CheckpointConfig(save_checkpoint_steps=8, exception_save=True)
    with pytest.raises(RuntimeError, match="user bug"):
        toy_model().train(2, toy_data(), [ModelCheckpoint("toy", str(tmp_path), cfg),
                                          LambdaCallback(on_train_step_end=boom)])
    assert _ckpts(tmp_path) == ["toy-1_8.ckpt", "toy-2_3_breakpoint.ckpt"]
    info = tr.load_checkpoint(str(tmp_path / "toy-2_3_breakpoint.ckpt"))
    assert "optimizer.state.0.momentum_buffer" in info


def test_async_save_files_are_complete(tmp_path) -> None:
    cfg = CheckpointConfig(save_checkpoint_steps=2, keep_checkpoint_max=2, async_save=True)
    model = toy_model()
    model.train(2, toy_data(), [ModelCheckpoint("toy", str(tmp_path), cfg)])
    assert _ckpts(tmp_path) == ["toy-2_6.ckpt", "toy-2_8.ckpt"]
    d = tr.load_checkpoint(str(tmp_path / "toy-2_8.ckpt"))
    assert torch.equal(d["0.weight"], model.network[0].weight)


def test_keep_best_by_validation_metric(tmp_path) -> None:
    cfg = CheckpointConfig(save_checkpoint_steps=8, monitor="loss", mode="min", keep_best_max=1)
    toy_model().fit(3, toy_data(), toy_data(), callbacks=[ModelCheckpoint("toy", str(tmp_path), cfg)])
    best = [f for f in _ckpts(tmp_path) if "-best-" in f]
    assert len(best) == 1
    info = inspection.describe(str(tmp_path / best[0])).info
    assert "loss" in info["metrics"]


def test_monitor_missing_metric_is_clear(tmp_path) -> None:
    cfg = CheckpointConfig(save_checkpoint_steps=8, monitor="f1")
    with pytest.raises(KeyError, match="ModelCheckpoint monitors 'f1' but eval returned"):
        toy_model().fit(1, toy_data(), toy_data(), callbacks=[ModelCheckpoint("toy", str(tmp_path), cfg)])


def test_save_every_n_seconds(tmp_path, monkeypatch) -> None:
    from torchresume.train import model_checkpoint
    clock = {"t": 0.0}

    def fake_monotonic() -> float:
        clock["t"] += 1.0  # one second per call: each step ends a second later
        return clock["t"]

    monkeypatch.setattr(model_checkpoint.time, "monotonic", fake_monotonic)
    cfg = CheckpointConfig(save_checkpoint_steps=0, save_checkpoint_seconds=3, keep_checkpoint_max=20)
    toy_model().train(1, toy_data(), [ModelCheckpoint("toy", str(tmp_path), cfg)])
    assert _ckpts(tmp_path) == ["toy-1_3.ckpt", "toy-1_6.ckpt", "toy-1_8.ckpt"]


def test_on_busy_skip_in_the_config_skips_a_save_due_while_one_is_written(tmp_path, monkeypatch) -> None:
    """CheckpointConfig(on_busy="skip") reaches the callback's manager: the write of step 2 is held
    (a slow disk, made deterministic) until step 5, so the save due at step 4 is skipped and logged;
    from step 5 on every step waits for the writer, so steps 6 and 8 are saved."""
    import logging
    import threading

    from torchresume import manager as manager_module

    gate, started = threading.Event(), threading.Event()
    real = manager_module.write_encoded

    def held(*args, **kwargs):
        started.set()
        assert gate.wait(30), "the held write was never released"
        return real(*args, **kwargs)
    monkeypatch.setattr(manager_module, "write_encoded", held)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("torchresume")
    logger.addHandler(handler)

    cfg = CheckpointConfig(save_checkpoint_steps=2, keep_checkpoint_max=10, async_save=True, on_busy="skip")
    cb = ModelCheckpoint("toy", str(tmp_path), cfg)

    def step_end(ctx) -> None:
        assert cb.manager is not None and cb.manager.on_busy == "skip"
        if ctx.global_step == 2:
            assert started.wait(10)  # the write of step 2 runs (held) from here on
        if ctx.global_step >= 5:
            gate.set()
            cb.manager.wait()  # the writer is idle before the next save is due
    try:
        toy_model().train(1, toy_data(), [cb, LambdaCallback(on_train_step_end=step_end)])  # 8 steps
    finally:
        gate.set()
        logger.removeHandler(handler)
    assert _ckpts(tmp_path) == ["toy-1_2.ckpt", "toy-1_6.ckpt", "toy-1_8.ckpt"]
    skipped = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert skipped == [f"skipped saving {tmp_path / 'toy-1_4.ckpt'}: the background save of "
                       f"{tmp_path / 'toy-1_2.ckpt'} is still running (on_busy='skip'; save less often "
                       "to keep every save)"]
    assert cb.latest_ckpt_file_name == str(tmp_path / "toy-1_8.ckpt")


def test_on_busy_skip_never_skips_the_last_steps_save(tmp_path) -> None:
    """Paced to 1 kB/s, each background save stays in flight for seconds: the periodic saves due
    meanwhile are skipped, but the end-of-training save waits for it and saves the last step."""
    cfg = CheckpointConfig(save_checkpoint_steps=2, keep_checkpoint_max=10, async_save=True, on_busy="skip",
                           write_mb_per_s=0.001)
    cb = ModelCheckpoint("toy", str(tmp_path), cfg)
    toy_model().train(1, toy_data(), [cb])  # 8 steps: saves due at 2, 4, 6, 8
    saved = _ckpts(tmp_path)
    assert saved[0] == "toy-1_2.ckpt" and saved[-1] == "toy-1_8.ckpt", saved
    assert len(saved) < 4, saved  # some were skipped
    assert cb.latest_ckpt_file_name == str(tmp_path / "toy-1_8.ckpt")
    assert all(verify(str(tmp_path / name)).valid for name in saved)


def test_resume_auto_of_an_encrypted_run_reads_with_the_configs_key(tmp_path) -> None:
    """resume="auto" finds the run's encrypted checkpoints with its own enc_key (it used to start over as
    'toy_1': the checkpoints could not be read without the key)."""
    cfg = CheckpointConfig(save_checkpoint_steps=8, enc_key=bytes(range(32)))
    toy_model().train(1, toy_data(), [ModelCheckpoint("toy", str(tmp_path), cfg)], resume="none")
    summary = toy_model().train(2, toy_data(), [ModelCheckpoint("toy", str(tmp_path), cfg)], resume="auto")
    assert summary["resumed_from"] == str(tmp_path / "toy-1_8.ckpt")
    assert _ckpts(tmp_path) == ["toy-1_8.ckpt", "toy-2_8.ckpt"]


@pytest.mark.parametrize("named", ["directory", "file"])
def test_resume_from_a_named_encrypted_directory_or_file_reads_with_the_configs_key(tmp_path, named) -> None:
    """As under torchrun: naming the run's directory or one of its files resumes with the config's key."""
    cfg = CheckpointConfig(save_checkpoint_steps=8, enc_key=bytes(range(32)))
    toy_model().train(1, toy_data(), [ModelCheckpoint("toy", str(tmp_path), cfg)], resume="none")
    source = str(tmp_path) if named == "directory" else str(tmp_path / "toy-1_8.ckpt")
    summary = toy_model().train(2, toy_data(), [ModelCheckpoint("toy", str(tmp_path), cfg)], resume=source)
    assert summary["resumed_from"] == str(tmp_path / "toy-1_8.ckpt")
