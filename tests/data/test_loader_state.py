"""Resuming a plain DataLoader in-process: skipped batches are never loaded, a finished epoch is
never re-read, and the result equals an uninterrupted run's bitwise."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

import torchresume as tr


class Counting(Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(3)
        self.x, self.y = torch.randn(40, 4, generator=g), torch.randint(0, 2, (40,), generator=g)
        self.loads = 0

    def __len__(self) -> int:
        return 40

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.loads += 1
        return self.x[i] + 0.1 * torch.randn(4), self.y[i]


class Boom(tr.Callback):
    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_step_begin(self, ctx) -> None:
        if ctx.global_step == self.at:
            raise RuntimeError("boom")


def _model() -> tr.Model:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 2))
    return tr.Model(net, nn.CrossEntropyLoss(), torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9))


def _fit(directory, epochs: int, data: Counting, extra=(), resume: str | None = "auto") -> tr.Model:
    model = _model()
    loader = DataLoader(data, batch_size=5, shuffle=True)
    cfg = tr.CheckpointConfig(save_checkpoint_steps=3)
    model.fit(epochs, loader, callbacks=[tr.ModelCheckpoint("net", str(directory), cfg), *extra], resume=resume)
    return model


def _state(model: tr.Model) -> list[torch.Tensor]:
    opt = model.optimizer
    assert opt is not None
    return [*model.network.state_dict().values(), *(s["momentum_buffer"] for s in opt.state.values()),
            torch.get_rng_state()]


@pytest.fixture
def reference(tmp_path) -> list[torch.Tensor]:
    return _state(_fit(tmp_path / "ref", 2, Counting()))


def test_mid_epoch_resume_loads_only_what_it_trains_on(tmp_path, reference, capsys) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        _fit(tmp_path, 2, Counting(), [Boom(7)])  # checkpoints at steps 3 and 6, then a crash
    data = Counting()
    model = _fit(tmp_path, 2, data)
    assert f"resumed from {tmp_path}/net-1_6.ckpt at epoch 1, step 6" in capsys.readouterr().out
    assert data.loads == 40 - 30 + 40  # the 30 samples of the 6 done batches were never loaded
    assert all(torch.equal(a, b) for a, b in zip(_state(model), reference, strict=True))


def test_epoch_boundary_resume_never_rereads_the_finished_epoch(tmp_path, reference, capsys) -> None:
    _fit(tmp_path, 1, Counting())  # ends with net-1_8.ckpt, the epoch's last step
    data = Counting()
    model = _fit(tmp_path, 2, data)
    assert f"resumed from {tmp_path}/net-1_8.ckpt" in capsys.readouterr().out
    assert data.loads == 40
    assert all(torch.equal(a, b) for a, b in zip(_state(model), reference, strict=True))


class Stream(IterableDataset):
    def __len__(self) -> int:
        return 10

    def __iter__(self):
        for i in range(10):
            yield torch.full((4,), float(i)), torch.tensor(i % 2)


def test_a_pipeline_that_cannot_resume_exactly_says_so_once(tmp_path, capsys) -> None:
    model = _model()
    model.train(2, DataLoader(Stream(), batch_size=5), resume=None)
    err = capsys.readouterr().err
    assert err.count("torchresume: warning:") == 1
    assert ("torchresume: warning: the training DataLoader reads an IterableDataset (Stream) without "
            "state_dict(): a resumed epoch re-reads it from its start and skips the batches already trained "
            "on, which is exact only if it yields the same batches each time (use torchdata's "
            "StatefulDataLoader with a stateful dataset for exact resume)\n") in err


FORK_HAZARD = (
    "a DataLoader forks its 2 workers from a process in a process group: a fork while one of "
    "the group's threads is inside Python can leave a worker hung at its start, and the training with it; "
    "make the DataLoader with multiprocessing_context='forkserver' (or 'spawn'), or call "
    "torch.multiprocessing.set_start_method('forkserver') first: it resumes exactly the same")


def test_workers_forked_from_a_rank_are_warned_of(one_rank_group: None) -> None:
    """A rank's DataLoader workers started by fork can hang at their start: the run says how to avoid it."""
    from torchresume.data.loader_state import feed_for, fork_hazard
    assert fork_hazard(DataLoader(Counting(), batch_size=8, num_workers=2, multiprocessing_context="fork")) \
        == FORK_HAZARD
    assert feed_for(DataLoader(Counting(), batch_size=8, num_workers=2,
                               multiprocessing_context="fork")).warning() is None  # said apart (Model.fit)
    for safe in (DataLoader(Counting(), batch_size=8, num_workers=2, multiprocessing_context="forkserver"),
                 DataLoader(Counting(), batch_size=8, num_workers=2, multiprocessing_context="spawn"),
                 DataLoader(Counting(), batch_size=8)):
        assert fork_hazard(safe) is None


class _StopAtBegin(tr.Callback):
    def on_train_begin(self, ctx) -> None:
        raise RuntimeError("stopped before the first batch")  # no worker is ever forked


def test_model_fit_warns_of_forked_workers_beside_its_other_caveats(one_rank_group: None, tmp_path, capsys) -> None:
    """persistent_workers' caveat does not hide the fork hazard: each is said at start-up."""
    loader = DataLoader(Counting(), batch_size=8, num_workers=2, multiprocessing_context="fork",
                        persistent_workers=True)
    with pytest.raises(RuntimeError, match="stopped before the first batch"):
        _model().fit(1, loader, callbacks=[_StopAtBegin()], resume="none")
    err = capsys.readouterr().err
    assert f"warning: {FORK_HAZARD}" in err and "persistent_workers=True" in err


def test_workers_forked_outside_a_process_group_are_not_warned_of() -> None:
    from torchresume.data.loader_state import fork_hazard
    assert fork_hazard(DataLoader(Counting(), batch_size=8, num_workers=2, multiprocessing_context="fork")) is None


def test_a_forkserver_default_start_method_is_not_warned_of(one_rank_group: None) -> None:
    """The HF Trainer cannot pass a multiprocessing context: the default one, set first, is what counts."""
    import multiprocessing

    from torchresume.data.loader_state import fork_hazard
    before = multiprocessing.get_start_method(allow_none=True)
    loader = DataLoader(Counting(), batch_size=8, num_workers=2)
    multiprocessing.set_start_method("forkserver", force=True)
    try:
        assert fork_hazard(loader) is None
        multiprocessing.set_start_method("fork", force=True)
        assert fork_hazard(loader) == FORK_HAZARD
    finally:
        multiprocessing.set_start_method(before, force=True)
