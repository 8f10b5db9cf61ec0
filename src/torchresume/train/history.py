"""History: per-epoch loss and validation metrics, kept in checkpoints so resume continues it."""

from __future__ import annotations

from typing import Any

from torchresume.train.callback import Callback, RunContext


class History(Callback):
    """Per-epoch loss (``history["loss"]``) and validation metrics (``history["eval_acc"]``, ...).

    Saved in checkpoints, so after a resume the lists continue instead of starting over.

    Example:
        ```python
        history = tr.History()
        model.fit(1, train_ds, valid_ds, callbacks=[history])
        print(history.epoch, history.history)
        ```
    """

    def __init__(self) -> None:
        self.epoch: list[int] = []
        self.history: dict[str, list[float]] = {}

    def on_train_epoch_end(self, ctx: RunContext) -> None:
        self.epoch.append(ctx.epoch)
        if ctx.loss is not None:
            self.history.setdefault("loss", []).append(float(ctx.loss))

    def on_eval_end(self, ctx: RunContext) -> None:
        for key, value in ctx.metrics.items():
            self.history.setdefault(f"eval_{key}", []).append(float(value))

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": list(self.epoch), "history": {k: list(v) for k, v in self.history.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = list(state["epoch"])
        self.history = {k: list(v) for k, v in state["history"].items()}
