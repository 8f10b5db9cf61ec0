import pytest
from torch import nn

from torchresume import CheckpointConfig, CheckpointConfigError, ModelCheckpoint


def test_defaults_match_mindspore() -> None:
    c = CheckpointConfig()
    assert (c.save_checkpoint_steps, c.save_checkpoint_seconds, c.keep_checkpoint_max,
            c.keep_checkpoint_per_n_minutes) == (1, 0, 5, 0)


def test_steps_win_over_seconds_and_max_over_minutes() -> None:
    c = CheckpointConfig(save_checkpoint_steps=10, save_checkpoint_seconds=30,
                         keep_checkpoint_max=3, keep_checkpoint_per_n_minutes=5)
    assert (c.save_checkpoint_seconds, c.keep_checkpoint_per_n_minutes) == (0, 0)


def test_both_keep_zero_keeps_one() -> None:
    c = CheckpointConfig(save_checkpoint_steps=5, keep_checkpoint_max=0)
    assert c.keep_checkpoint_max == 1


def test_minutes_when_max_is_zero() -> None:
    c = CheckpointConfig(keep_checkpoint_max=0, keep_checkpoint_per_n_minutes=2)
    assert (c.keep_checkpoint_max, c.keep_checkpoint_per_n_minutes) == (0, 2)


def test_all_zero_is_an_error() -> None:
    with pytest.raises(CheckpointConfigError, match="are all 0 or None; set at least one"):
        CheckpointConfig(0, 0, 0, 0)
    with pytest.raises(CheckpointConfigError, match="are all 0 or None"):
        CheckpointConfig(None, None, None, None)


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"save_checkpoint_steps": -1}, CheckpointConfigError,
     "save_checkpoint_steps must be a non-negative int or None, got -1"),
    ({"save_checkpoint_steps": 1.5}, TypeError,
     "save_checkpoint_steps must be a non-negative int or None, got float 1.5"),
    ({"keep_checkpoint_max": True}, TypeError,
     "keep_checkpoint_max must be a non-negative int or None, got bool True"),
    ({"async_save": 1}, TypeError, "async_save must be a bool, got int 1"),
    ({"append_info": ["epoch"]}, CheckpointConfigError,
     "append_info may name only ('epoch_num', 'step_num'), got 'epoch'"),
    ({"append_info": [{"a": 1}, {"b": 2}]}, CheckpointConfigError, "at most one dict"),
    ({"append_info": "epoch_num"}, TypeError, "append_info must be a list, got str"),
    ({"saved_network": "net"}, TypeError, "saved_network must be an nn.Module, got str"),
    ({"enc_key": b"k" * 16, "enc_mode": "SM4-CBC"}, ValueError, "enc_mode='SM4-CBC' is not supported"),
    ({"format": "onnx"}, CheckpointConfigError, "format must be 'ckpt' or 'safetensors', got 'onnx'"),
    ({"mode": "up"}, CheckpointConfigError, "mode must be 'max' or 'min', got 'up'"),
    ({"keep_best_max": 0}, CheckpointConfigError, "keep_best_max must be a positive int, got 0"),
])
def test_bad_arguments(kwargs, error, message) -> None:
    with pytest.raises(error) as exc:
        CheckpointConfig(**kwargs)
    assert message in str(exc.value)


def test_append_info_accepts_names_and_one_dict() -> None:
    c = CheckpointConfig(append_info=["epoch_num", "step_num", {"lr": 0.01, "tag": "x"}])
    assert c.append_names == ["epoch_num", "step_num"] and c.append_dict == {"lr": 0.01, "tag": "x"}
    layer = nn.Linear(1, 1)
    assert CheckpointConfig(saved_network=layer).saved_network is layer


def test_model_checkpoint_arguments() -> None:
    with pytest.raises(CheckpointConfigError, match="prefix must be a non-empty str without '/' or '-'"):
        ModelCheckpoint(prefix="a/b")
    with pytest.raises(TypeError, match="config must be a CheckpointConfig, got dict"):
        ModelCheckpoint(config={})  # type: ignore[arg-type]


def test_parallel_only_options_are_refused() -> None:
    import pytest

    from torchresume import CheckpointConfig, CheckpointConfigError
    for kwargs in ({"integrated_save": False}, {"remove_redundancy": True}):
        with pytest.raises(CheckpointConfigError, match="a single-process checkpoint is always whole"):
            CheckpointConfig(**kwargs)
    assert CheckpointConfig(integrated_save=True, remove_redundancy=False).save_checkpoint_steps == 1


def test_on_busy_defaults_to_wait_and_takes_skip() -> None:
    assert CheckpointConfig().on_busy == "wait"
    assert CheckpointConfig(async_save=True, on_busy="skip").on_busy == "skip"


@pytest.mark.parametrize("bad", ["later", "Skip", None, 1])
def test_an_unknown_on_busy_is_refused_up_front_as_the_manager_refuses_it(bad) -> None:
    """The config raises the manager's own error and message, before any training starts."""
    with pytest.raises(CheckpointConfigError) as exc:
        CheckpointConfig(async_save=True, on_busy=bad)
    assert str(exc.value) == (f"on_busy={bad!r} is not a policy; use 'wait' (block until the previous "
                              "background save is committed, then save) or 'skip' (drop this save and "
                              "keep training)")
