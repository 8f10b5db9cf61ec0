"""CheckpointConfig: every MindSpore argument with MindSpore's validation rules, plus best-keeping."""

from __future__ import annotations

from typing import Any

from torch import nn

from torchresume.errors import CheckpointConfigError
from torchresume.save_slot import DEFAULT_SAVE_DEADLINE_S, check_on_busy, check_overlap, check_save_deadline
from torchresume.storage.pacing import check_write_rate

_APPEND_KEYS = ("epoch_num", "step_num")
ON_SAVE_DEADLINE = ("continue", "stop")


def check_on_save_deadline(on_save_deadline: str) -> str:
    """What training does after a sharded save aborted at its deadline: "continue" or "stop"."""
    if on_save_deadline not in ON_SAVE_DEADLINE:
        raise CheckpointConfigError(
            f"on_save_deadline={on_save_deadline!r} is not a policy; use 'continue' (warn, keep training: the "
            "previous checkpoint stays the newest and the next save tries again) or 'stop' (raise the "
            "SaveDeadlineError and end training)")
    return on_save_deadline


def _non_negative_int(name: str, value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a non-negative int or None, got "
                        f"{type(value).__name__} {value!r}")
    if value < 0:
        raise CheckpointConfigError(f"{name} must be a non-negative int or None, got {value}")
    return value


def _check_append_info(append_info: Any) -> tuple[list[str], dict[str, Any]]:
    if append_info is None:
        return [], {}
    if not isinstance(append_info, list):
        raise TypeError(f"append_info must be a list, got {type(append_info).__name__}")
    names: list[str] = []
    extra: dict[str, Any] = {}
    for item in append_info:
        if isinstance(item, str):
            if item not in _APPEND_KEYS:
                raise CheckpointConfigError(f"append_info may name only {_APPEND_KEYS}, got {item!r}")
            names.append(item)
        elif isinstance(item, dict):
            if extra:
                raise CheckpointConfigError("append_info may hold at most one dict")
            for k, v in item.items():
                if not isinstance(k, str) or isinstance(v, (list, dict, tuple)) or not isinstance(
                        v, (bool, int, float, str)):
                    raise TypeError(f"append_info dict must map str to int/float/bool/str, got "
                                    f"{k!r}: {type(v).__name__}")
            extra = dict(item)
        else:
            raise TypeError(f"append_info items must be 'epoch_num', 'step_num' or a dict, got "
                            f"{type(item).__name__}")
    return names, extra


class CheckpointConfig:
    """When to save, what to keep, and how to write (MindSpore's CheckpointConfig).

    - ``save_checkpoint_steps`` > 0 wins over ``save_checkpoint_seconds``;
      ``keep_checkpoint_max`` > 0 wins over ``keep_checkpoint_per_n_minutes``;
      if both keep values are 0, one checkpoint is kept.
    - All four being 0/None is an error.
    - ``integrated_save`` and ``remove_redundancy`` are accepted for MindSpore
      compatibility at their defaults only (a single-process checkpoint is whole).
    - ``format``: None/"safetensors" write torchresume files (exact resume);
      "ckpt" writes MindSpore protobuf .ckpt files (weights and optimizer
      state only, loadable by MindSpore; see mindspore_io).
    - ``monitor`` / ``mode`` / ``keep_best_max``: also keep the best checkpoints
      by a validation metric (``Model.fit``), as ``{prefix}-best-{epoch}_{step}.ckpt``.
    - ``on_busy`` (with ``async_save``): what a save due while the previous background save
      is still running does: "wait" (default) for it, or "skip" this save (logged); passed to
      the callback's CheckpointManager. Breakpoint saves always wait. Under torchrun saves are
      collective and always wait.
    - ``write_mb_per_s`` (with ``async_save``): write each background save at most this many
      MB/s (10**6 bytes), to spread its I/O over more training steps; None (default): as fast
      as the disk goes. A save, signal or close that waits for the write lifts the limit.
    - ``overlap`` (with ``async_save``): a save returns before the weights and optimizer state
      are copied; the copy runs beside the next forward and backward pass, and the next
      ``optimizer.step`` waits for what is left (module buffers, RNG and data position are
      copied before the save returns). Also under torchrun.
    - ``save_deadline_s`` (under torchrun): seconds each rank has to write its part of a save
      (default 300, far below the process group's 600 s timeout); a rank past it makes every rank
      abort that save (``SaveDeadlineError`` naming the rank), nothing is committed and the previous
      checkpoint stays the newest. None: no deadline. ``on_save_deadline`` says what training does
      then: "continue" (default: a warning, the next save tries again) or "stop" (the error is
      raised). One process has no other rank for a hung write to hold: there only the defaults
      (or ``save_deadline_s=None``) are accepted.

    Example:
        ```python
        config = tr.CheckpointConfig(save_checkpoint_steps=2, keep_checkpoint_max=3, async_save=True,
                                     on_busy="skip")
        best = tr.CheckpointConfig(save_checkpoint_steps=4, monitor="acc", keep_best_max=1)
        ```
    """

    def __init__(self, save_checkpoint_steps: int | None = 1, save_checkpoint_seconds: int | None = 0,
                 keep_checkpoint_max: int | None = 5, keep_checkpoint_per_n_minutes: int | None = 0,
                 integrated_save: bool = True, async_save: bool = False,
                 saved_network: nn.Module | None = None, append_info: list[Any] | None = None,
                 enc_key: bytes | None = None, enc_mode: str = "AES-GCM",
                 exception_save: bool = False, crc_check: bool = False,
                 remove_redundancy: bool = False, format: str | None = None,
                 monitor: str | None = None, mode: str = "max", keep_best_max: int = 1,
                 on_busy: str = "wait", write_mb_per_s: float | None = None, overlap: bool = False,
                 save_deadline_s: float | None = DEFAULT_SAVE_DEADLINE_S, on_save_deadline: str = "continue") -> None:
        steps = _non_negative_int("save_checkpoint_steps", save_checkpoint_steps)
        seconds = _non_negative_int("save_checkpoint_seconds", save_checkpoint_seconds)
        keep_max = _non_negative_int("keep_checkpoint_max", keep_checkpoint_max)
        per_minutes = _non_negative_int("keep_checkpoint_per_n_minutes", keep_checkpoint_per_n_minutes)
        if not (steps or seconds or keep_max or per_minutes):
            raise CheckpointConfigError(
                "save_checkpoint_steps, save_checkpoint_seconds, keep_checkpoint_max and "
                "keep_checkpoint_per_n_minutes are all 0 or None; set at least one (e.g. "
                "save_checkpoint_steps=1875)")
        if steps:
            seconds = 0
        if keep_max:
            per_minutes = 0
        elif not per_minutes:
            keep_max = 1
        for name, flag in (("integrated_save", integrated_save), ("async_save", async_save),
                           ("exception_save", exception_save), ("crc_check", crc_check),
                           ("remove_redundancy", remove_redundancy)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__} {flag!r}")
        if not integrated_save or remove_redundancy:
            raise CheckpointConfigError(
                "integrated_save=False and remove_redundancy=True shape checkpoints of parallel "
                "training; a single-process checkpoint is always whole. Leave them at their defaults")
        if saved_network is not None and not isinstance(saved_network, nn.Module):
            raise TypeError(f"saved_network must be an nn.Module, got {type(saved_network).__name__}")
        if format not in (None, "ckpt", "safetensors"):
            raise CheckpointConfigError(f"format must be 'ckpt' or 'safetensors', got {format!r}")
        if enc_key is not None:  # format="ckpt" (MindSpore protobuf) also allows AES-CBC
            from torchresume.files.mindspore_io import check_config
            check_config(format, enc_key, enc_mode, crc_check)
        if mode not in ("max", "min"):
            raise CheckpointConfigError(f"mode must be 'max' or 'min', got {mode!r}")
        if monitor is not None and not isinstance(monitor, str):
            raise TypeError(f"monitor must be a metric name (str), got {type(monitor).__name__}")
        if isinstance(keep_best_max, bool) or not isinstance(keep_best_max, int) or keep_best_max < 1:
            raise CheckpointConfigError(f"keep_best_max must be a positive int, got {keep_best_max!r}")
        check_on_busy(on_busy)  # the manager's checks: same errors, same messages, raised here up front
        check_write_rate(write_mb_per_s, async_save)
        check_overlap(overlap, async_save)
        self.save_deadline_s = check_save_deadline(save_deadline_s)
        self.on_save_deadline = check_on_save_deadline(on_save_deadline)
        self.save_checkpoint_steps = steps
        self.save_checkpoint_seconds = seconds
        self.keep_checkpoint_max = keep_max
        self.keep_checkpoint_per_n_minutes = per_minutes
        self.async_save = async_save
        self.saved_network = saved_network
        self.append_names, self.append_dict = _check_append_info(append_info)
        self.append_info = append_info
        self.enc_key, self.enc_mode = enc_key, enc_mode
        self.exception_save, self.crc_check = exception_save, crc_check
        self.format = format
        self.monitor, self.mode, self.keep_best_max = monitor, mode, keep_best_max
        self.on_busy = on_busy
        self.write_mb_per_s = write_mb_per_s
        self.overlap = overlap

    def __repr__(self) -> str:
        return (f"CheckpointConfig(save_checkpoint_steps={self.save_checkpoint_steps}, "
                f"save_checkpoint_seconds={self.save_checkpoint_seconds}, "
                f"keep_checkpoint_max={self.keep_checkpoint_max}, "
                f"keep_checkpoint_per_n_minutes={self.keep_checkpoint_per_n_minutes})")
