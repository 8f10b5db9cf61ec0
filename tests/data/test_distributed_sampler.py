"""The distributed sampler with simulated ranks: world-size-free order, exactly-once across resizes."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchresume.data import ArrayDataset
from torchresume.data.distributed_dataset import shard
from torchresume.data.distributed_sampler import DistributedResumableSampler
from torchresume.errors import DataError


def _ranks(length: int, batch: int, world: int, seed: int = 0) -> list[DistributedResumableSampler]:
    return [DistributedResumableSampler(length, batch, rank=r, world_size=world, seed=seed)
            for r in range(world)]


def _run(samplers: list[DistributedResumableSampler], steps: int) -> list[int]:
    """``steps`` lock-stepped steps of every rank; the indices seen, rank by rank per step."""
    its = [s.iterate(len(s)) for s in samplers]
    seen: list[int] = []
    for _ in range(steps):
        for it in its:
            seen += next(it).tolist()
    return seen


def test_global_order_is_the_single_process_order_at_any_world_size() -> None:
    single = _run(_ranks(48, 8, 1, seed=3), 6)
    for world in (2, 4, 8):
        assert _run(_ranks(48, 8, world, seed=3), 6) == single
    expected = torch.randperm(48, generator=torch.Generator().manual_seed(3)).tolist()
    assert single == expected


def test_rank_takes_its_contiguous_slice_of_each_global_batch() -> None:
    samplers = _ranks(40, 8, 4, seed=1)
    order = samplers[0].order(0).tolist()
    first = [next(iter(s)).tolist() for s in samplers]
    assert first == [order[0:2], order[2:4], order[4:6], order[6:8]]


def test_state_is_identical_on_every_rank_and_world_size_free() -> None:
    samplers = _ranks(64, 8, 4)
    _run(samplers, 3)
    states = [s.state_dict() for s in samplers]
    assert all(state == states[0] for state in states)
    assert states[0] == {"seed": 0, "epoch": 0, "consumed": 3, "length": 64, "global_batch_size": 8}
    assert samplers[0].samples == 24  # global batches x global batch size


def test_resume_4_to_2_mid_epoch_sees_every_index_exactly_once() -> None:
    old = _ranks(96, 8, 4, seed=7)
    seen = _run(old, 5)
    new = _ranks(96, 8, 2, seed=0)
    for s in new:
        s.load_state_dict(old[0].state_dict())
    seen += _run(new, len(new[0]) - 5)
    assert Counter(seen) == Counter(range(96))


def test_last_partial_global_batch_is_dropped_and_differs_per_epoch() -> None:
    samplers = _ranks(50, 8, 2)
    epoch0 = _run(samplers, 6)
    assert len(epoch0) == 48 and len(set(epoch0)) == 48
    for s in samplers:  # the epoch ends after its 6 full global batches
        assert list(s.iterate(6)) == [] and s.epoch == 1
    epoch1 = _run(samplers, 6)
    assert set(range(50)) - set(epoch0) != set(range(50)) - set(epoch1)


def test_uneven_split_is_a_typed_error_naming_the_fix() -> None:
    with pytest.raises(DataError, match="global batch size 10 does not split evenly over 4 ranks; "
                                        "use a batch size that is a multiple of the world size"):
        DistributedResumableSampler(100, 10, rank=0, world_size=4)


def test_rank_outside_world_and_too_little_data_are_typed_errors() -> None:
    with pytest.raises(DataError, match="rank 2 is outside a world of 2 ranks"):
        DistributedResumableSampler(100, 10, rank=2, world_size=2)
    with pytest.raises(DataError, match="5 samples do not fill one global batch of 8"):
        DistributedResumableSampler(5, 8, rank=0, world_size=2)


def test_state_of_other_data_is_refused() -> None:
    sampler = DistributedResumableSampler(64, 8, rank=0, world_size=2)
    other = DistributedResumableSampler(64, 16, rank=0, world_size=2).state_dict()
    with pytest.raises(DataError, match="global batches of 16, this run has 64 in global batches of 8"):
        sampler.load_state_dict(other)


def test_shard_of_an_array_dataset_keeps_the_global_steps() -> None:
    images, labels = torch.arange(64.0).reshape(64, 1), torch.arange(64)
    base = ArrayDataset(images, labels, batch_size=8, seed=2)
    views = [shard(base, r, 4) for r in range(4)]
    assert {len(v) for v in views} == {len(base)} == {8}
    steps = [list(v) for v in views]
    single = [y.tolist() for _, y in base]
    for step in range(8):
        joined = [i for r in range(4) for i in steps[r][step][1].tolist()]
        assert joined == single[step]


@settings(max_examples=60, deadline=None)
@given(length=st.integers(8, 200), per_rank=st.integers(1, 4), seed=st.integers(0, 1000),
       worlds=st.lists(st.sampled_from([1, 2, 4, 8]), min_size=1, max_size=4), data=st.data())
def test_any_sequence_of_world_sizes_sees_a_prefix_of_the_order_exactly_once(
        length: int, per_rank: int, seed: int, worlds: list[int], data: st.DataObject) -> None:
    batch = per_rank * 8  # splits over every world size drawn
    if length < batch:
        return
    steps = length // batch
    state = None
    seen: list[int] = []
    done = 0
    for i, world in enumerate(worlds):
        samplers = _ranks(length, batch, world, seed=seed)
        if state is not None:
            for s in samplers:
                s.load_state_dict(state)
        last = i == len(worlds) - 1
        run = steps - done if last else data.draw(st.integers(0, steps - done))
        seen += _run(samplers, run)
        done += run
        state = samplers[0].state_dict()
    order = samplers[0].order(0).tolist()
    assert seen == order[:steps * batch]
    assert len(set(seen)) == len(seen)
