"""Shared by the MindSpore tests: fixture paths, MindSpore's recorded loads, the torch twin
of the fixture network, and the MindSpore interpreter (when installed)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from torchresume.format.mindspore import DTYPES

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mindspore"
REPO = Path(__file__).resolve().parents[2]
GCM_KEY = bytes(range(16))
CBC_KEY = bytes(range(32))


def mindspore_python() -> str | None:
    """The MindSpore venv's interpreter (scripts/setup_mindspore.sh), or None."""
    venv = os.environ.get("TORCHRESUME_MINDSPORE_VENV",
                          os.path.expanduser("~/.cache/torchresume/mindspore-venv"))
    python = os.path.join(venv, "bin", "python")
    return python if os.path.exists(os.path.join(venv, ".torchresume-mindspore")) else None


needs_mindspore = pytest.mark.skipif(
    mindspore_python() is None,
    reason="real MindSpore is not installed: run `bash scripts/setup_mindspore.sh` (its venv is "
           "$TORCHRESUME_MINDSPORE_VENV or ~/.cache/torchresume/mindspore-venv)")


def run_mindspore(jobs: list[dict[str, Any]], tmp_path: Path) -> list[dict[str, Any]]:
    """scripts/mindspore_load_check.py on ``jobs`` in the MindSpore interpreter; its report per job."""
    python = mindspore_python()
    assert python is not None, "decorate the test with @needs_mindspore"
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    proc = subprocess.run([python, str(REPO / "scripts" / "mindspore_load_check.py"),
                           str(tmp_path / "jobs.json"), str(tmp_path / "report.json")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report: list[dict[str, Any]] = json.loads((tmp_path / "report.json").read_text())
    return report


def expected(stem: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(manifest, load kwargs) of MindSpore's own load_checkpoint of fixture ``stem``."""
    doc = json.loads((FIXTURES / "expected" / f"{stem}.json").read_text())
    arrays = np.load(FIXTURES / "expected" / f"{stem}.npz")
    for entry in doc["entries"].values():
        if entry["kind"] == "tensor":
            entry["bytes"] = arrays[entry["npz"]].tobytes()
    kwargs = dict(doc["load_kwargs"])
    if "dec_key" in kwargs:
        kwargs["dec_key"] = bytes.fromhex(kwargs["dec_key"])
    kwargs.pop("crc_check", None)
    kwargs.pop("format", None)
    return doc, kwargs


def raw(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_same_as_mindspore(loaded: dict[str, Any], doc: dict[str, Any]) -> None:
    """Names, dtypes, shapes and bytes equal to what MindSpore's load_checkpoint returned."""
    want = doc["entries"]
    assert sorted(loaded) == sorted(want)
    for name, entry in want.items():
        value = loaded[name]
        if entry["kind"] == "str":
            assert value == entry["value"], name
            continue
        assert isinstance(value, torch.Tensor), name
        assert value.dtype == DTYPES[entry["dtype"]], (name, value.dtype, entry["dtype"])
        assert list(value.shape) == entry["shape"], name
        assert raw(value) == entry["bytes"], f"{name}: bytes differ from MindSpore's load"


class TorchBNNet(nn.Module):
    """The torch twin of scripts/make_mindspore_fixtures.py's BNNet, layer for layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * 6 * 6, 8)
        self.ln = nn.LayerNorm((8,))
        self.emb = nn.Embedding(10, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        y = self.ln(self.fc(self.flatten(self.bn(self.conv1(x)))))
        return self.head(y + self.emb(idx))


def trained_twin(optimizer: str, steps: int = 3) -> tuple[TorchBNNet, torch.optim.Optimizer]:
    torch.manual_seed(0)
    net = TorchBNNet()
    opt: torch.optim.Optimizer
    if optimizer == "momentum":
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    else:
        opt = torch.optim.Adam(net.parameters(), lr=0.001)
    for _ in range(steps):
        opt.zero_grad()
        out = net(torch.rand(4, 1, 8, 8), torch.randint(0, 10, (4,)))
        nn.functional.cross_entropy(out, torch.randint(0, 3, (4,))).backward()
        opt.step()
    return net, opt
