"""Bad torchrun set-ups fail with a typed error naming the fix (one in-process gloo rank, no launcher)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist
from torch import nn

from torchresume.data import ArrayDataset
from torchresume.data.distributed_dataset import DistributedArrayDataset
from torchresume.errors import CheckpointConfigError, DataError
from torchresume.train import CheckpointConfig, LossMonitor, Model, ModelCheckpoint, distributed
from torchresume.train.stop_agreement import StopAgreement


@pytest.fixture
def one_rank() -> Iterator[None]:
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _model() -> Model:
    net = nn.Linear(2, 1)
    return Model(net, nn.MSELoss(), torch.optim.SGD(net.parameters(), lr=0.1), device="cpu")


def _data(batch: int = 4) -> ArrayDataset:
    x = torch.randn(32, 2)
    return ArrayDataset(x, x[:, :1], batch_size=batch)


def test_launched_reads_world_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert distributed.launched()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not distributed.launched()


def test_prepare_shards_data_and_keeps_the_checkpoint_callback(one_rank: None, tmp_path) -> None:
    model = _model()
    checkpoint = ModelCheckpoint("p", str(tmp_path))
    data, callbacks, world = distributed.prepare(model, _data(), [LossMonitor(1), checkpoint], True)
    assert isinstance(data, DistributedArrayDataset) and len(data) == 8
    assert [type(cb) for cb in callbacks] == [StopAgreement, LossMonitor, ModelCheckpoint]
    assert callbacks[2] is checkpoint  # no callback is swapped for another
    assert (world.rank, world.size) == (0, 1)
    assert isinstance(model.step_network, nn.parallel.DistributedDataParallel)


@pytest.fixture
def torchrun_rank(one_rank: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """One in-process rank that Model.train treats as a torchrun rank (the group is already joined)."""
    monkeypatch.setattr("torchresume.train.model._launched_by_torchrun", lambda: True)


def test_resume_auto_without_a_checkpoint_callback_names_the_fix(torchrun_rank: None) -> None:
    with pytest.raises(ValueError, match="resume='auto' needs a ModelCheckpoint callback"):
        _model().train(1, _data(), [LossMonitor(1)], resume="auto")


def test_resume_must_name_a_directory(torchrun_rank: None, tmp_path) -> None:
    with pytest.raises(CheckpointConfigError,
                       match="resume must be 'auto', 'none', a directory of checkpoints or a checkpoint file"):
        _model().train(1, _data(), [ModelCheckpoint("p", str(tmp_path))], resume=3)  # type: ignore[arg-type]


def test_a_sharded_run_resumes_in_process_without_a_checkpoint_callback(torchrun_rank: None, tmp_path) -> None:
    """resume=<directory> with no ModelCheckpoint: the same sharded restore (train/resume.py), then training."""
    first = _model()
    first.train(1, _data(), [ModelCheckpoint("p", str(tmp_path), CheckpointConfig(save_checkpoint_steps=4))])
    again = _model()
    summary = again.train(2, _data(), [LossMonitor(1)], resume=str(tmp_path))
    assert summary["resumed_from"] == str(tmp_path / "p-1_8.ckpt") and summary["global_step"] == 16
    done = _model().train(1, _data(), [ModelCheckpoint("p", str(tmp_path))], resume="auto")
    assert done["already_finished"] and done["global_step"] == 8


def test_global_batch_must_split_over_the_ranks() -> None:
    world = distributed.World(rank=0, size=3, device=torch.device("cpu"))
    with pytest.raises(DataError, match="global batch size 4 does not split evenly over 3 ranks"):
        distributed.shard_data(_data(4), world)


def test_a_one_process_run_resumes_under_torchrun(one_rank: None, tmp_path, monkeypatch) -> None:
    """A run's one-process checkpoint, then the same directory under torchrun: it continues from that file
    (every rank reads it), saves sharded checkpoints of the same run, and names one file as well."""
    first = _model()
    first.train(1, _data(), [ModelCheckpoint("p", str(tmp_path), CheckpointConfig(save_checkpoint_steps=4))])
    assert (tmp_path / "p-1_8.ckpt").is_file()
    monkeypatch.setattr("torchresume.train.model._launched_by_torchrun", lambda: True)
    again = _model()
    summary = again.train(2, _data(), [ModelCheckpoint("p", str(tmp_path))], resume="auto")
    assert summary["resumed_from"] == str(tmp_path / "p-1_8.ckpt") and summary["global_step"] == 16
    assert (tmp_path / "p-2_8.ckpt").is_dir()  # sharded, the same run's prefix
    named = _model().train(2, _data(), [LossMonitor(1)], resume=str(tmp_path / "p-1_8.ckpt"))
    assert named["resumed_from"] == str(tmp_path / "p-1_8.ckpt") and named["global_step"] == 16


def test_a_named_directory_resumes_the_run_not_its_best_copy(torchrun_rank: None, tmp_path) -> None:
    """The best copies ({prefix}-best) are saved last, at eval: resuming a named directory under torchrun
    still picks the run's own newest checkpoint, as in one process; a named sharded checkpoint resumes itself."""
    torch.manual_seed(0)
    x = torch.randn(32, 2)
    data = ArrayDataset(x, (x[:, 0] > 0).long(), batch_size=4)

    def classifier() -> Model:
        torch.manual_seed(0)
        net = nn.Linear(2, 2)
        return Model(net, nn.CrossEntropyLoss(), torch.optim.SGD(net.parameters(), lr=0.1), metrics={"loss"},
                     device="cpu")
    cfg = CheckpointConfig(save_checkpoint_steps=4, keep_checkpoint_max=5, monitor="loss", mode="min")
    classifier().fit(1, data, data, callbacks=[ModelCheckpoint("p", str(tmp_path), cfg)])
    assert sorted(p.name for p in tmp_path.glob("p-best-*")) == ["p-best-1_8.ckpt"]
    summary = classifier().train(2, data, [LossMonitor(1)], resume=str(tmp_path))
    assert summary["resumed_from"] == str(tmp_path / "p-1_8.ckpt")
    named = classifier().train(2, data, [LossMonitor(1)], resume=str(tmp_path / "p-1_4.ckpt"))
    assert named["resumed_from"] == str(tmp_path / "p-1_4.ckpt") and named["global_step"] == 16
