"""ResumableBatchSampler and ArrayDataset: a saved position continues at the next batch, bitwise."""

from __future__ import annotations

import pytest
import torch

from torchresume.data import ArrayDataset, ResumableBatchSampler


def _batches(sampler: ResumableBatchSampler, n: int) -> list[list[int]]:
    it = iter(sampler)
    return [next(it).tolist() for _ in range(n)]


def test_a_restored_sampler_continues_where_the_saved_one_stopped() -> None:
    a = ResumableBatchSampler(100, 8, seed=3)
    first = _batches(a, 5)
    state = a.state_dict()
    rest = list(map(torch.Tensor.tolist, a.iterate(len(a))))
    b = ResumableBatchSampler(100, 8, seed=0)
    b.load_state_dict(state)
    assert list(map(torch.Tensor.tolist, b.iterate(len(b)))) == rest
    seen = sorted(i for batch in first + rest for i in batch)
    assert seen == sorted(set(seen)) and len(seen) == len(a) * 8  # each index once, the remainder dropped


def test_each_epoch_has_its_own_order_and_the_epoch_advances() -> None:
    s = ResumableBatchSampler(64, 8, seed=1)
    e0 = [t.tolist() for t in s]
    e1 = [t.tolist() for t in s]
    assert s.epoch == 2 and s.consumed == 0
    assert e0 != e1 and sorted(i for b in e0 for i in b) == sorted(i for b in e1 for i in b) == list(range(64))


def test_unshuffled_order_and_a_kept_remainder() -> None:
    s = ResumableBatchSampler(10, 4, shuffle=False, drop_remainder=False)
    assert len(s) == 3 and [t.tolist() for t in s] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_state_for_other_data_is_refused_with_how_to_fix() -> None:
    s = ResumableBatchSampler(100, 8)
    with pytest.raises(ValueError, match=r"sampler state is for 50 samples in batches of 8, this data has 100 in "
                                         r"batches of 8; resume with the same data and batch_size"):
        s.load_state_dict(ResumableBatchSampler(50, 8).state_dict())


def test_bad_batch_size_is_refused() -> None:
    with pytest.raises(ValueError, match="batch_size must be positive, got 0"):
        ResumableBatchSampler(10, 0)


def test_array_dataset_resumes_mid_epoch_with_the_same_batches() -> None:
    images, labels = torch.randn(40, 3), torch.arange(40)
    a = ArrayDataset(images, labels, batch_size=4, seed=7, steps_per_epoch=8)
    it = iter(a)
    for _ in range(3):
        next(it)
    state = a.state_dict()
    expected = [y.tolist() for _, y in it]
    b = ArrayDataset(images, labels, batch_size=4, seed=7, steps_per_epoch=8)
    b.load_state_dict(state)
    got = [y.tolist() for _, y in b]
    assert got == expected and len(got) == 5 and len(a) == b.get_dataset_size() == 8


def test_ordered_batches_leave_the_training_position_alone() -> None:
    d = ArrayDataset(torch.randn(12, 2), torch.arange(12), batch_size=4)
    before = d.state_dict()
    assert [y.tolist() for _, y in d.ordered_batches()] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert d.state_dict() == before
