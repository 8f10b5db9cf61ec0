"""``save_on_exception``: seed 000's decorator done right.

The seed's decorator saves the model and the optimizer into two files with
names built by hand, never fsyncs, and finds them again by ctime. Here one
CheckpointManager writes one atomic breakpoint holding model, optimizer and
RNG state, named ``{prefix}-{epoch}_{step}_breakpoint.ckpt``, then re-raises.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from torchresume.manager import CheckpointManager

F = TypeVar("F", bound=Callable[..., Any])


def save_on_exception(manager: CheckpointManager, *, epoch_arg: str = "epoch",
                      step_arg: str = "step") -> Callable[[F], F]:
    """Decorate a training function: if it raises, save a breakpoint, then re-raise.

    The epoch (and step, if given) are read from the call's keyword arguments.

    Example:
        ```python
        mgr = tr.CheckpointManager("runs/soe", model=net, prefix="net")

        @tr.save_on_exception(mgr)
        def train_epoch(epoch):
            ...                                  # an exception here leaves net-{epoch}_0_breakpoint.ckpt

        train_epoch(epoch=1)
        mgr.close()
        ```
    """
    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except BaseException as exc:
                epoch, step = int(kwargs.get(epoch_arg, 0)), int(kwargs.get(step_arg, 0))
                manager.save_breakpoint(epoch, step, reason=exc)
                raise
        return wrapper  # type: ignore[return-value]
    return decorate
