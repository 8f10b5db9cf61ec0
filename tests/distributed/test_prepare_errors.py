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
from torchresume.train.distributed_checkpoint import DistributedModelCheckpoint
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


def test_prepare_shards_data_and_swaps_the_checkpoint_callback(one_rank: None, tmp_path) -> None:
    model = _model()
    data, callbacks, resume, lead = distributed.prepare(
        model, _data(), [LossMonitor(1), ModelCheckpoint("p", str(tmp_path))], "auto", True)
    assert isinstance(data, DistributedArrayDataset) and len(data) == 8
    assert [type(cb) for cb in callbacks] == [StopAgreement, LossMonitor, DistributedModelCheckpoint]
    assert resume == "none" and lead
    assert isinstance(model.step_network, nn.parallel.DistributedDataParallel)


def test_resume_without_a_checkpoint_callback_names_the_fix(one_rank: None) -> None:
    with pytest.raises(CheckpointConfigError, match="under torchrun, resuming needs a ModelCheckpoint "
                                                    "callback .*; add one or pass resume='none'"):
        distributed.prepare(_model(), _data(), [LossMonitor(1)], "auto", True)


def test_best_checkpoints_are_refused_under_torchrun(one_rank: None, tmp_path) -> None:
    cfg = CheckpointConfig(monitor="loss", keep_best_max=1)
    with pytest.raises(CheckpointConfigError, match="monitor=.* is not supported under torchrun yet"):
        distributed.prepare(_model(), _data(), [ModelCheckpoint("p", str(tmp_path), cfg)], "none", True)


def test_resume_must_name_a_directory(one_rank: None, tmp_path) -> None:
    with pytest.raises(CheckpointConfigError, match="resume must be 'auto', 'none' or a directory"):
        distributed.prepare(_model(), _data(), [ModelCheckpoint("p", str(tmp_path))], 3, True)


def test_global_batch_must_split_over_the_ranks() -> None:
    world = distributed.World(rank=0, world_size=3, local_rank=0, device=torch.device("cpu"))
    with pytest.raises(DataError, match="global batch size 4 does not split evenly over 3 ranks"):
        distributed.shard_data(_data(4), world)
