from __future__ import annotations

import json
import math
import re

import pytest
import torch

from tests.train.helpers import toy_data, toy_model
from torchresume import EarlyStopping, History, LambdaCallback, LossMonitor, SummaryCollector, TimeMonitor
from torchresume.train import Callback


def test_hooks_run_in_order() -> None:
    seen: list[str] = []
    cb = LambdaCallback(on_train_begin=lambda c: seen.append("begin"),
                        on_train_epoch_end=lambda c: seen.append(f"epoch{c.epoch}"),
                        on_train_end=lambda c: seen.append("end"))
    toy_model().train(2, toy_data(), [cb])
    assert seen == ["begin", "epoch1", "epoch2", "end"]


def test_unknown_lambda_hook() -> None:
    with pytest.raises(TypeError, match="unknown hooks \\['on_bogus'\\]"):
        LambdaCallback(on_bogus=print)


def test_only_overridden_hooks_are_dispatched(monkeypatch) -> None:
    class Counter(Callback):
        calls = 0

        def on_train_step_end(self, ctx) -> None:
            Counter.calls += 1

    inherited: list[str] = []
    # the base class's no-op hooks record any call: none may reach a callback that did not override them
    for hook in ("on_train_step_begin", "on_train_epoch_begin", "on_eval_end"):
        monkeypatch.setattr(Callback, hook, lambda self, ctx, hook=hook: inherited.append(hook))
    toy_model().train(2, toy_data(), [Counter()])  # 8 steps per epoch
    assert Counter.calls == 16
    assert inherited == []


def test_loss_monitor_prints_and_stops_on_nan(capsys) -> None:
    toy_model().train(1, toy_data(), [LossMonitor(4)])
    assert capsys.readouterr().out.count("loss is") == 2
    model = toy_model(lr=1e6)
    with torch.no_grad():
        model.network[0].weight.fill_(math.inf)
    with pytest.raises(ValueError, match="loss is nan at epoch 1 step 1: training diverged"):
        model.train(1, toy_data(), [LossMonitor(1)])


def test_history_and_time_monitor(capsys) -> None:
    h, t = History(), TimeMonitor()
    toy_model().fit(2, toy_data(), toy_data(), callbacks=[h, t])
    assert h.epoch == [1, 2] and len(h.history["eval_acc"]) == 2 and len(t.epoch_times) == 2
    lines = [line for line in capsys.readouterr().out.splitlines() if "per step time" in line]
    assert len(lines) == 2
    for epoch, (line, measured) in enumerate(zip(lines, t.epoch_times, strict=True), start=1):
        m = re.fullmatch(r"epoch (\d+) time: ([\d.]+) s, per step time: ([\d.]+) ms", line)
        assert m is not None, line
        assert int(m[1]) == epoch and float(m[2]) == round(measured, 3) and measured > 0
        # the per-step figure is the epoch's time over its 8 steps (to the printed precision)
        assert float(m[3]) == pytest.approx(1000 * measured / 8, abs=0.0011)


def test_early_stopping_stops_and_keeps_counters() -> None:
    es = EarlyStopping(monitor="eval_acc", patience=0, baseline=1.01, mode="max")
    summary = toy_model().fit(5, toy_data(), toy_data(), callbacks=[es])
    assert summary["epoch"] == 1 and es.stopped_epoch == 1
    assert es.state_dict() == {"best": 1.01, "wait": 1, "stopped_epoch": 1}


def test_summary_collector_writes_jsonl(tmp_path) -> None:
    sc = SummaryCollector(str(tmp_path), collect_freq=4)
    toy_model().fit(1, toy_data(), toy_data(), callbacks=[sc])
    records = [json.loads(line) for line in (tmp_path / "summary.jsonl").read_text().splitlines()]
    kinds = [r["kind"] for r in records]
    assert kinds == ["step", "step", "epoch", "eval"]
    assert records[0]["global_step"] == 4 and records[0]["lr"] == 0.1


def test_model_arguments() -> None:
    from torchresume import Model
    with pytest.raises(TypeError, match="network must be an nn.Module, got str"):
        Model("net")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown metrics \\['f1'\\]"):
        Model(torch.nn.Linear(1, 1), metrics={"f1"})
    with pytest.raises(ValueError, match="Model needs loss_fn and optimizer to train"):
        Model(torch.nn.Linear(4, 2)).train(1, toy_data())
    with pytest.raises(ValueError, match="epoch must be a positive int, got 0"):
        toy_model().train(0, toy_data())
