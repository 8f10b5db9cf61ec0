import math

import numpy as np
import pytest
import torch

from torchresume.state.tree import TreeError, flat_view, flatten, unflatten


def test_round_trip_keeps_types_and_structure() -> None:
    tree = {
        "state": {0: {"momentum_buffer": torch.arange(3.0)}, 1: {"step": torch.tensor(4.0)}},
        "param_groups": [{"lr": 0.01, "betas": (0.9, 0.999), "params": [0, 1], "name": None}],
        "rng": (3, tuple(range(5)), None),
        "np": np.arange(4, dtype=np.uint32),
        "floats": [math.inf, -math.inf, 1.5],
        "flag": True,
    }
    tensors, skeleton = flatten(tree)
    back = unflatten(skeleton, tensors)
    assert back["state"][0]["momentum_buffer"].tolist() == [0.0, 1.0, 2.0]
    assert list(back["state"]) == [0, 1] and isinstance(list(back["state"])[0], int)
    assert back["param_groups"][0]["betas"] == (0.9, 0.999)
    assert back["rng"] == (3, (0, 1, 2, 3, 4), None)
    assert isinstance(back["np"], np.ndarray) and back["np"].dtype == np.uint32
    assert back["floats"][0] == math.inf and back["floats"][1] == -math.inf
    assert back["flag"] is True


def test_nan_round_trips() -> None:
    tensors, skeleton = flatten({"x": math.nan})
    assert math.isnan(unflatten(skeleton, tensors)["x"])


def test_tensor_names_are_dotted_paths() -> None:
    tensors, _ = flatten({"state": {0: {"exp_avg": torch.zeros(2)}}})
    assert list(tensors) == ["state.0.exp_avg"]


def test_colliding_names_get_unique_suffix() -> None:
    tensors, skeleton = flatten({"a.b": torch.zeros(1), "a": {"b": torch.ones(1)}})
    assert sorted(tensors) == ["a.b", "a.b#1"]
    back = unflatten(skeleton, tensors)
    assert back["a"]["b"].item() == 1.0 and back["a.b"].item() == 0.0


def test_unsupported_value_names_its_path() -> None:
    with pytest.raises(TreeError, match=r"cannot save object at 'opt.hook'"):
        flatten({"opt": {"hook": object()}})


def test_unsupported_key_type() -> None:
    with pytest.raises(TreeError, match=r"state key 1.5 at '<root>' is a float"):
        flatten({1.5: 1})


def test_flat_view_keeps_scalar_sequences_whole() -> None:
    flat = flat_view({"param_groups": [{"lr": 0.1, "params": [0, 1]}], "w": torch.ones(1)})
    assert flat["param_groups.0.params"] == [0, 1]
    assert flat["param_groups.0.lr"] == 0.1
    assert set(flat) == {"param_groups.0.params", "param_groups.0.lr", "w"}


@pytest.mark.parametrize("bad", [{"Q": 1}, {"D": 1, "L": 2}, {"F": "1.0"}, {"T": "missing"}])
def test_malformed_skeleton_raises(bad: object) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        unflatten(bad, {})
