"""Every Python block of the README runs, in a fresh directory, against small stand-ins for its names.

The prelude defines what the README leaves to the reader (``net``, ``opt``, datasets, a training
step, a 16-byte ``key``) and puts the MindSpore-trained LeNet5 fixture where the MindSpore block
expects it; the blocks themselves are taken from README.md unchanged.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import torchresume as tr
from torchresume.app.models import LeNet5
from torchresume.data import ArrayDataset
from torchresume.files import verify

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "mindspore"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def _prelude() -> dict[str, Any]:
    torch.manual_seed(0)
    net = LeNet5()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    images, labels = torch.randn(64, 1, 32, 32), torch.randint(0, 10, (64,))

    def train_step(net: nn.Module, opt: torch.optim.Optimizer) -> None:
        opt.zero_grad()
        nn.functional.cross_entropy(net(images[:8]), labels[:8]).backward()
        opt.step()

    return {"tr": tr, "nn": nn, "torch": torch, "net": net, "opt": opt, "optimizer": opt, "steps": 3,
            "epochs": 1, "train_step": train_step, "key": b"0123456789abcdef",
            "train_ds": ArrayDataset(images, labels, batch_size=16),
            "valid_ds": ArrayDataset(images[:32], labels[:32], batch_size=16, shuffle=False)}


def test_the_readme_has_python_blocks() -> None:
    assert len(_blocks()) >= 3


@pytest.mark.parametrize("index", range(len(_blocks())))
def test_readme_python_block_runs(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copy(FIXTURES / "lenet-2_1875.ckpt", tmp_path / "lenet-2_1875.ckpt")
    namespace = _prelude()
    exec(compile(_blocks()[index], f"README.md python block {index + 1}", "exec"), namespace)
    # what each block leaves behind is real: files it wrote verify, objects it made are usable
    for path in tmp_path.rglob("*.ckpt"):
        if path.name != "lenet-2_1875.ckpt":
            assert verify(str(path)).valid, path


def test_the_custom_loop_example_saves_on_a_schedule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As a user copies it: checkpoints every 100 steps, so a kill -9 never loses the whole run;
    run again, it continues from the newest one."""
    [block] = [b for b in _blocks() if "mgr.guard()" in b and "restore_latest" in b]
    monkeypatch.chdir(tmp_path)
    namespace = {**_prelude(), "steps": 250}
    exec(compile(block, "README.md custom loop", "exec"), namespace)
    assert sorted(p.name for p in (tmp_path / "runs" / "x").glob("*.ckpt")) == [
        "net-1_100.ckpt", "net-1_200.ckpt", "net-1_250.ckpt"]
    again = {**_prelude(), "steps": 300}
    exec(compile(block, "README.md custom loop", "exec"), again)
    assert again["start"] == 250
    assert (tmp_path / "runs" / "x" / "net-1_300.ckpt").exists()
