"""OpenMP's waiting policy for the ``torchresume`` command, set before torch loads.

GNU OpenMP (torch's CPU wheels) reads ``OMP_WAIT_POLICY`` once, when ``import torch`` loads it.
Its default lets a thread that finished its share of an operator spin for a while before it
sleeps: on a machine whose cores are busy with other work the spinning threads take turns with
the ones still computing, and a LeNet5 step ran 20-30x slower with two threads than with one.
The command line waits passively unless the user chose (``OMP_WAIT_POLICY`` set); a program that
imports torchresume keeps whatever it had. The package imports this module first, and importing
it applies ``set_wait_policy``, before anything imports torch.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

COMMAND = "torchresume"
_TAKES_VALUE = ("-X", "-W", "-Q")  # interpreter options whose value is the next argument


def is_command_line(argv: Sequence[str]) -> bool:
    """Whether ``argv`` (``sys.orig_argv``) runs the torchresume command: the console script, or
    ``python -m torchresume`` (torchrun's workers run that)."""
    args = list(argv[1:])
    while args:
        arg = args.pop(0)
        if arg == "-m":
            return bool(args) and (args[0] == COMMAND or args[0].startswith(COMMAND + ".cli"))
        if arg in _TAKES_VALUE:
            args = args[1:]
        elif not arg.startswith("-"):
            return os.path.basename(arg) == COMMAND
    return False


def set_wait_policy() -> None:
    """``OMP_WAIT_POLICY=passive`` for the command line, when the user did not set it and torch is
    not loaded yet (later it would change nothing)."""
    if "OMP_WAIT_POLICY" in os.environ or "torch" in sys.modules:
        return
    if is_command_line(getattr(sys, "orig_argv", sys.argv)):
        os.environ["OMP_WAIT_POLICY"] = "passive"


set_wait_policy()

__all__ = ["is_command_line", "set_wait_policy"]
