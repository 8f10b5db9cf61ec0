"""A user's own Stateful, registered by name, round-trips through save, inspect and restore."""

from __future__ import annotations

import pytest
import torch

import torchresume as tr
from torchresume.cli.main import main
from torchresume.state.registry import StateRegistry


class EMA:
    """A user object with tensor and scalar state (an exponential moving average of weights)."""

    def __init__(self, net: torch.nn.Module) -> None:
        self.shadow = {k: v.detach().clone() for k, v in net.state_dict().items() if v.is_floating_point()}
        self.updates = 0
        self.decay = 0.99

    def update(self, net: torch.nn.Module) -> None:
        for k, v in net.state_dict().items():
            if k in self.shadow:
                self.shadow[k].mul_(self.decay).add_(v, alpha=1 - self.decay)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"shadow": self.shadow, "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}
        self.updates, self.decay = state["updates"], state["decay"]


def test_user_stateful_round_trips(tmp_path, trained, capsys) -> None:
    net, opt = trained
    ema = EMA(net)
    for _ in range(3):
        ema.update(net)
    mgr = tr.CheckpointManager(str(tmp_path), model=net, optimizer=opt, prefix="run")
    mgr.register("ema", ema)
    path = mgr.save(1, 3, 3)
    mgr.close()

    assert main(["inspect", path]) == 0
    out = capsys.readouterr().out
    assert "extra.ema.shadow.fc1.weight" in out and "extra.ema.updates" in out

    from tests.conftest import TinyNet
    fresh_net = TinyNet()
    fresh_ema = EMA(fresh_net)
    restorer = tr.CheckpointManager(str(tmp_path), model=fresh_net, prefix="run", stateful={"ema": fresh_ema})
    info = restorer.restore_latest()
    restorer.close()
    assert info is not None and info["lacking"] == []
    assert fresh_ema.updates == 3 and fresh_ema.decay == 0.99
    for k, v in ema.shadow.items():
        assert torch.equal(fresh_ema.shadow[k], v)


def test_missing_entry_is_reported_as_lacking(tmp_path, trained) -> None:
    net, opt = trained
    mgr = tr.CheckpointManager(str(tmp_path), model=net, optimizer=opt, prefix="run")
    mgr.save(1, 1, 1)
    mgr.close()
    restorer = tr.CheckpointManager(str(tmp_path), model=net, prefix="run", stateful={"ema": EMA(net)})
    info = restorer.restore_latest()
    restorer.close()
    assert info is not None and info["lacking"] == ["extra.ema"]


def test_registry_rejects_bad_entries(net) -> None:
    reg = StateRegistry()
    with pytest.raises(TypeError, match=r"'x': int has no state_dict\(\)/load_state_dict\(\); implement the "
                                        "Stateful protocol to checkpoint it"):
        reg.register("x", 3)
    reg.register("ema", EMA(net))
    with pytest.raises(ValueError, match="state name 'ema' is registered already"):
        reg.register("ema", EMA(net))
    mgr = tr.CheckpointManager("unused-dir", model=net)
    with pytest.raises(ValueError, match="state name 'optimizer' is reserved"):
        mgr.register("optimizer", EMA(net))
