"""A worker for tests/distributed/test_torchrun_parity.py: Model.train with several CheckpointConfigs.

Run under torchrun (2 ranks) or, for the one-process side of a comparison, by the test itself
through ``train_runs``. Each run writes into ``{out}/{name}``; under torchrun each rank then
writes ``{out}/rank{r}.json``: whether the encrypted checkpoint restores bitwise with the key,
and the typed error of a restore with a wrong key and with none.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from torchresume.data import ArrayDataset
from torchresume.errors import TorchResumeError
from torchresume.train import CheckpointConfig, LambdaCallback, Model, ModelCheckpoint
from torchresume.train.distributed import end_process

KEY = bytes(range(32))
PREFIX = "par"
APPEND = ["epoch_num", "step_num", {"run": "parity"}]


def configs() -> dict[str, CheckpointConfig]:
    """One config per run; each sets options the parity test checks in the result."""
    return {
        # keep_checkpoint_max (exact), enc_key, append_info
        "enc": CheckpointConfig(save_checkpoint_steps=2, keep_checkpoint_max=2, enc_key=KEY, append_info=APPEND),
        # keep_checkpoint_per_n_minutes (keep_checkpoint_max=0), with async_save
        "minutes": CheckpointConfig(save_checkpoint_steps=2, keep_checkpoint_max=0,
                                    keep_checkpoint_per_n_minutes=1, async_save=True),
    }


def _model() -> Model:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    return Model(net, nn.MSELoss(), torch.optim.Adam(net.parameters(), lr=1e-2), device="cpu")


def _data() -> ArrayDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 4, generator=g)
    return ArrayDataset(x, x[:, :2] * 3.0, batch_size=4, seed=2)  # 8 global batches of 4


def train_runs(out: str) -> tuple[dict[str, Model], str]:
    """Every run of ``configs()`` into ``out/<name>``: the trained models, and where the "enc" run's
    second epoch resumed from (a new Model, ``resume="auto"``: the encrypted checkpoint read with the key)."""
    models = {}
    for name, cfg in configs().items():
        model = _model()
        model.train(1, _data(), [ModelCheckpoint(PREFIX, os.path.join(out, name), cfg)], resume="none")
        models[name] = model
    resumed = _model()
    summary = resumed.train(2, _data(), [ModelCheckpoint(PREFIX, os.path.join(out, "enc"), configs()["enc"])],
                            resume="auto")
    models["enc"] = resumed
    return models, os.path.basename(str(summary["resumed_from"]))


def seconds_run(out: str) -> None:
    """save_checkpoint_seconds=1 with only rank 0 slow (0.5 s a step): every rank saves when it is late."""
    def slow(ctx: Any) -> None:
        if os.environ.get("RANK", "0") == "0":
            time.sleep(0.5)
    cfg = CheckpointConfig(save_checkpoint_steps=0, save_checkpoint_seconds=1, keep_checkpoint_max=10)
    _model().train(1, _data(), [LambdaCallback(on_train_step_end=slow),
                                 ModelCheckpoint(PREFIX, os.path.join(out, "seconds"), cfg)], resume="none")


def best_run(out: str) -> dict[str, Any]:
    """monitor='loss' (min, keep_best_max=1) with an eval every epoch; then the same command again:
    already finished (nothing trained, nothing saved)."""
    cfg = CheckpointConfig(save_checkpoint_steps=4, keep_checkpoint_max=1, monitor="loss", mode="min",
                           keep_best_max=1)
    def classifier() -> Model:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        return Model(net, nn.CrossEntropyLoss(), torch.optim.Adam(net.parameters(), lr=1e-2),
                     metrics={"loss"}, device="cpu")
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))
    data = ArrayDataset(x, (x[:, 0] > 0).long(), batch_size=4, seed=2)
    classifier().fit(2, data, data, callbacks=[ModelCheckpoint(PREFIX, os.path.join(out, "best"), cfg)],
                     resume="auto")
    summary = classifier().fit(2, data, data, callbacks=[ModelCheckpoint(PREFIX, os.path.join(out, "best"), cfg)],
                               resume="auto")
    return {"already_finished": summary["already_finished"], "global_step": summary["global_step"]}


def skip_run(out: str) -> list[bool]:
    """async_save with on_busy='skip', a save due every step: whether each step's save was kept
    (this rank's view; every rank must see the same)."""
    cfg = CheckpointConfig(save_checkpoint_steps=1, keep_checkpoint_max=20, async_save=True, on_busy="skip")
    checkpoint = ModelCheckpoint(PREFIX, os.path.join(out, "skip"), cfg)
    kept: list[bool] = []

    def record_step(ctx: Any) -> None:
        kept.append(checkpoint._last_saved_step == ctx.global_step)
    record = LambdaCallback(on_train_step_end=record_step)
    _model().train(1, _data(), [checkpoint, record], resume="none")
    return kept


def _restore(directory: str, key: bytes | None) -> tuple[nn.Module, str]:
    """A fresh network restored from the newest checkpoint in ``directory``; '' or the typed error."""
    from torchresume.distributed import ShardedStore
    net = _model().network
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
    state = {"model": net.state_dict()}
    try:
        ShardedStore(directory, prefix=PREFIX, enc_key=key).restore(state)
    except TorchResumeError as exc:
        return net, f"{type(exc).__name__}: {exc}"
    net.load_state_dict(state["model"])
    return net, ""


def main() -> None:
    out = sys.argv[1]
    models, resumed_from = train_runs(out)
    seconds_run(out)
    best = best_run(out)
    kept = skip_run(out)
    trained = models["enc"].network.state_dict()  # after the resumed second epoch
    restored, error = _restore(os.path.join(out, "enc"), KEY)
    result: dict[str, Any] = {
        "resumed_from": resumed_from,
        "restore_error": error,
        "bitwise": sorted(name for name, t in restored.state_dict().items() if torch.equal(t, trained[name])),
        "names": sorted(trained),
        "trained": {name: t.flatten().tolist() for name, t in trained.items()},
        "wrong_key": _restore(os.path.join(out, "enc"), bytes(32))[1],
        "no_key": _restore(os.path.join(out, "enc"), None)[1],
        "best": best,
        "skip_kept": kept,
    }
    with open(os.path.join(out, f"rank{os.environ['RANK']}.json"), "w") as f:
        json.dump(result, f)
    dist.barrier()
    end_process(0)  # gloo's rare SIGABRT in the interpreter's teardown is not what this test is about


if __name__ == "__main__":
    main()
