"""OnRequestExit: on a signal, stop after the current step and save the full state.

As in MindSpore, the state goes to ``{directory}/{file_name}.ckpt`` and is
loaded when training starts again; unlike MindSpore, the epoch, step, data
position and RNG come back too, so the run continues where it stopped.
"""

from __future__ import annotations

import os
import signal

from torchresume.log import log
from torchresume.signals import StopSignals
from torchresume.train.callback import Callback, RunContext


class OnRequestExit(Callback):
    """On signal ``sig``, save the full state to ``{directory}/{file_name}.ckpt`` and stop.

    The next run with the same callback loads that file when training starts and continues
    at the step after it (epoch, step, data position, RNG and callback state included).
    ``save_mindir`` is accepted for MindSpore compatibility and ignored.

    Example:
        ```python
        model.train(1, train_ds, callbacks=[tr.OnRequestExit(file_name="lenet", directory="exit")])
        ```
    """

    def __init__(self, save_ckpt: bool = True, save_mindir: bool = False, file_name: str = "Net",
                 directory: str = "./", sig: int = signal.SIGTERM) -> None:
        if not isinstance(file_name, str) or not file_name or "/" in file_name:
            raise ValueError(f"file_name must be a plain file name, got {file_name!r}")
        self.save_ckpt, self.sig = save_ckpt, sig
        self.path = os.path.join(directory, f"{file_name}.ckpt")
        self.directory = directory
        self._stop = StopSignals((sig,))

    def on_train_begin(self, ctx: RunContext) -> None:
        self._stop.received = None
        self._stop.install()
        if os.path.exists(self.path) and not ctx.resumed_from:
            ctx.run_state().restore(self.path, ctx)

    def on_train_step_end(self, ctx: RunContext) -> None:
        if self._stop.received is None:
            return
        if self.save_ckpt:
            os.makedirs(self.directory, exist_ok=True)
            ctx.run_state().save_to(self.path, ctx)
            log.info("OnRequestExit: signal %s: saved %s; stopping", self.sig, self.path)
        ctx.request_stop()

    def on_train_end(self, ctx: RunContext) -> None:
        self._stop.uninstall()
