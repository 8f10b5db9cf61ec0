"""Torchrun parity, in process: every CheckpointConfig parameter is honoured or refused under torchrun.

The table below is checked against ``inspect.signature(CheckpointConfig.__init__)``: a parameter
without a row fails, so a new one forces a decision. A refused row carries the exact message
``train/torchrun_options.check`` raises; an honoured row names the test that shows it honoured
(under a real torchrun, in tests/distributed/test_torchrun_parity.py, unless it says otherwise).
"""

from __future__ import annotations

import importlib
import inspect

import pytest
import torch
import torch.distributed as dist
from torch import nn

from torchresume.cli.files import cli_words
from torchresume.data import ArrayDataset
from torchresume.errors import CheckpointConfigError, UnsupportedUnderTorchrunError
from torchresume.train import CheckpointConfig, LossMonitor, Model, ModelCheckpoint, distributed, torchrun_options

KEY = bytes(range(32))
PARITY = "tests.distributed.test_torchrun_parity"
CONFIG = "tests.train.test_checkpoint_config"
HERE = "tests.train.test_torchrun_options"
DEADLINE = "tests.distributed.test_deadline"
OR_ONE = ", or train in one process"

# parameter -> ("honoured", kwargs the gate accepts, "module::test that shows it")
#           or ("refused", kwargs, the exact message)
TABLE: dict[str, tuple[str, dict[str, object], str]] = {
    "save_checkpoint_steps": ("honoured", {"save_checkpoint_steps": 2},
                              f"{PARITY}::test_honoured_options_under_torchrun"),
    "save_checkpoint_seconds": ("honoured", {"save_checkpoint_steps": 0, "save_checkpoint_seconds": 1},
                                f"{PARITY}::test_honoured_options_under_torchrun"),
    "keep_checkpoint_max": ("honoured", {"keep_checkpoint_max": 2}, f"{PARITY}::test_honoured_options_under_torchrun"),
    "keep_checkpoint_per_n_minutes": ("honoured", {"keep_checkpoint_max": 0, "keep_checkpoint_per_n_minutes": 1},
                                      f"{PARITY}::test_honoured_options_under_torchrun"),
    "integrated_save": ("honoured", {"integrated_save": True},
                        f"{CONFIG}::test_parallel_only_options_are_refused"),
    "async_save": ("honoured", {"async_save": True}, f"{PARITY}::test_honoured_options_under_torchrun"),
    "saved_network": ("refused", {"saved_network": nn.Linear(1, 1)},
                      "saved_network=<Linear> is not supported under torchrun yet (a sharded checkpoint saves "
                      "the trained network and its optimizer through DCP); leave saved_network=None" + OR_ONE),
    "append_info": ("honoured", {"append_info": ["epoch_num", {"run": "x"}]},
                    f"{PARITY}::test_honoured_options_under_torchrun"),
    "enc_key": ("honoured", {"enc_key": KEY}, f"{PARITY}::test_honoured_options_under_torchrun"),
    "enc_mode": ("honoured", {"enc_key": KEY, "enc_mode": "AES-GCM"},
                 f"{PARITY}::test_honoured_options_under_torchrun"),
    "exception_save": ("refused", {"exception_save": True},
                       "exception_save=True is not supported under torchrun yet (a breakpoint save needs every "
                       "rank and one of them failed; the newest committed checkpoint resumes); leave "
                       "exception_save=False" + OR_ONE),
    "crc_check": ("refused", {"crc_check": True},
                  "crc_check=True is not supported under torchrun yet (it adds MindSpore's CRC32 to format='ckpt' "
                  "files; the parts of a sharded checkpoint always carry per-tensor checksums, verified on every "
                  "read); leave crc_check=False" + OR_ONE),
    "remove_redundancy": ("honoured", {"remove_redundancy": False},
                          f"{CONFIG}::test_parallel_only_options_are_refused"),
    "format": ("refused", {"format": "ckpt"},
               "format='ckpt' is not supported under torchrun yet (a MindSpore .ckpt is one file, a torchrun "
               "checkpoint is parts written by every rank); leave format=None" + OR_ONE),
    "monitor": ("honoured", {"monitor": "loss"}, f"{PARITY}::test_best_skip_lock_and_finished_under_torchrun"),
    "mode": ("honoured", {"monitor": "loss", "mode": "min"},
             f"{PARITY}::test_best_skip_lock_and_finished_under_torchrun"),
    "keep_best_max": ("honoured", {"monitor": "loss", "keep_best_max": 2},
                      f"{PARITY}::test_best_skip_lock_and_finished_under_torchrun"),
    "on_busy": ("honoured", {"async_save": True, "on_busy": "skip"},
                f"{PARITY}::test_best_skip_lock_and_finished_under_torchrun"),
    "overlap": ("honoured", {"async_save": True, "overlap": True},
                "tests.fault.test_distributed_kills::test_random_kills_end_bitwise_equal_to_an_uninterrupted_run"),
    "save_deadline_s": ("honoured", {"save_deadline_s": 2},
                        f"{DEADLINE}::test_hung_rank_aborts_the_save_on_every_rank_sync_and_async"),
    "on_save_deadline": ("honoured", {"on_save_deadline": "stop"},
                         f"{DEADLINE}::test_training_continues_or_stops_after_an_aborted_save"),
    "write_mb_per_s": ("refused", {"async_save": True, "write_mb_per_s": 50},
                       "write_mb_per_s=50 is not supported under torchrun yet (each rank writes its part of a "
                       "sharded save at full speed); leave write_mb_per_s=None" + OR_ONE),
}


def _parameters() -> list[str]:
    return [p for p in inspect.signature(CheckpointConfig.__init__).parameters if p != "self"]


def test_every_parameter_has_a_row_and_the_gate_agrees() -> None:
    missing = [p for p in _parameters() if p not in TABLE]
    assert missing == [], f"decide each new CheckpointConfig parameter under torchrun: add a row for {missing}"
    assert sorted(TABLE) == sorted(_parameters())
    refused = {r.option for r in torchrun_options.REFUSED}
    assert refused == {p for p, row in TABLE.items() if row[0] == "refused"}
    assert set(torchrun_options.HONOURED) == {p for p, row in TABLE.items() if row[0] == "honoured"}


@pytest.mark.parametrize("name", [p for p, row in TABLE.items() if row[0] == "refused"])
def test_refused_option_raises_the_exact_typed_error(name: str) -> None:
    _, kwargs, message = TABLE[name]
    with pytest.raises(UnsupportedUnderTorchrunError) as info:
        torchrun_options.check(CheckpointConfig(**kwargs))  # type: ignore[arg-type]
    assert str(info.value) == message
    assert isinstance(info.value, CheckpointConfigError)


@pytest.mark.parametrize("name", [p for p, row in TABLE.items() if row[0] == "honoured"])
def test_honoured_option_passes_the_gate_and_names_a_real_test(name: str) -> None:
    _, kwargs, proof = TABLE[name]
    config = CheckpointConfig(**kwargs)  # type: ignore[arg-type]
    assert torchrun_options.check(config) is None
    module, test = proof.split("::")
    assert callable(getattr(importlib.import_module(module), test)), proof


def test_defaults_pass_the_gate() -> None:
    assert torchrun_options.check(CheckpointConfig()) is None


def _model() -> Model:
    net = nn.Linear(2, 1)
    return Model(net, nn.MSELoss(), torch.optim.SGD(net.parameters(), lr=0.1), device="cpu")


def test_prepare_refuses_before_joining_the_process_group(tmp_path) -> None:
    """The one call site: ``train.distributed.prepare`` checks first, so no rank joins, wraps or writes."""
    x = torch.randn(8, 2)
    cfg = CheckpointConfig(save_checkpoint_steps=1, exception_save=True)
    callbacks = [LossMonitor(1), ModelCheckpoint("p", str(tmp_path / "ckpt"), cfg)]
    model = _model()
    with pytest.raises(UnsupportedUnderTorchrunError, match=r"^exception_save=True is not supported under torchrun"):
        distributed.prepare(model, ArrayDataset(x, x[:, :1], batch_size=4), callbacks, True)
    assert not dist.is_initialized()
    assert model.step_network is None  # not wrapped in DDP
    assert not (tmp_path / "ckpt").exists()


def test_the_cli_names_its_flag() -> None:
    """`torchresume train` sets write_mb_per_s from --write-mb-per-s: its refusal says the flag."""
    message = TABLE["write_mb_per_s"][2]
    assert cli_words(message) == ("--write-mb-per-s 50 is not supported under torchrun yet (each rank writes its "
                                  "part of a sharded save at full speed); drop --write-mb-per-s, or train in one "
                                  "process")
