"""state/optim.py via load_param_into_net(optimizer, ...): per-parameter state, not hyperparameters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchresume import load_param_into_net
from torchresume.errors import StateMismatchError
from torchresume.state.optim import load_into_optimizer
from torchresume.state.tree import flat_view


def _step(opt: torch.optim.Optimizer, params: list[torch.Tensor], n: int = 3) -> None:
    torch.manual_seed(1)
    for _ in range(n):
        opt.zero_grad()
        sum((p * torch.randn_like(p)).sum() for p in params).backward()
        opt.step()


def _params() -> list[nn.Parameter]:
    torch.manual_seed(0)
    return [nn.Parameter(torch.randn(3, 2)), nn.Parameter(torch.randn(3))]


def test_sgd_momentum_buffers_restored_lr_kept() -> None:
    src_p = _params()
    src = torch.optim.SGD(src_p, lr=0.1, momentum=0.9)
    _step(src, src_p)
    flat = flat_view(src.state_dict())
    dst_p = _params()
    dst = torch.optim.SGD(dst_p, lr=0.01, momentum=0.5)
    not_loaded, unused = load_param_into_net(dst, flat)
    assert not_loaded == [] and unused == []
    for i in range(2):
        assert torch.equal(dst.state[dst_p[i]]["momentum_buffer"],
                           src.state[src_p[i]]["momentum_buffer"])
    assert dst.param_groups[0]["lr"] == 0.01
    assert dst.param_groups[0]["momentum"] == 0.5


def test_adam_moments_and_step_restored_under_optimizer_prefix() -> None:
    src_p = _params()
    src = torch.optim.Adam(src_p, lr=1e-3)
    _step(src, src_p, 4)
    # cloned, as if read from a file: the live state_dict shares tensors with ``src``
    flat = {f"optimizer.{k}": v.clone() if isinstance(v, torch.Tensor) else v
            for k, v in flat_view(src.state_dict()).items()}
    flat["fc.weight"] = torch.zeros(1)  # model weights beside it are ignored
    dst_p = _params()
    dst = torch.optim.Adam(dst_p, lr=5e-4)
    not_loaded, unused = load_param_into_net(dst, flat)
    assert not_loaded == [] and unused == []
    for i in range(2):
        for k in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(dst.state[dst_p[i]][k], src.state[src_p[i]][k]), k
    assert dst.param_groups[0]["lr"] == 5e-4
    # same parameters, same gradients, same moments: the next step matches (the lr is equal here)
    dst.param_groups[0]["lr"] = 1e-3
    with torch.no_grad():
        for a, b in zip(dst_p, src_p, strict=True):
            a.copy_(b)
    _step(src, src_p, 1)
    _step(dst, dst_p, 1)
    assert all(torch.equal(a, b) for a, b in zip(dst_p, src_p, strict=True))


def test_restore_hyperparams_takes_the_saved_lr() -> None:
    src_p = _params()
    src = torch.optim.SGD(src_p, lr=0.1, momentum=0.9)
    _step(src, src_p)
    dst = torch.optim.SGD(_params(), lr=0.01, momentum=0.9)
    load_into_optimizer(dst, flat_view(src.state_dict()), strict=False, restore_hyperparams=True)
    assert dst.param_groups[0]["lr"] == 0.1


def test_strict_shape_mismatch_lists_differences_and_loads_nothing() -> None:
    src_p = _params()
    src = torch.optim.SGD(src_p, lr=0.1, momentum=0.9)
    _step(src, src_p)
    flat = flat_view(src.state_dict())
    other = [nn.Parameter(torch.randn(4, 2)), nn.Parameter(torch.randn(3))]
    dst = torch.optim.SGD(other, lr=0.1, momentum=0.9)
    with pytest.raises(StateMismatchError) as err:
        load_param_into_net(dst, flat, strict_load=True)
    assert str(err.value) == ("strict load failed; nothing was loaded:\n"
                              "  state.0.momentum_buffer: checkpoint shape (3, 2) vs parameter (4, 2)")
    assert dst.state_dict()["state"] == {}


def test_strict_too_many_parameters_and_groups() -> None:
    src_p = _params()
    src = torch.optim.SGD(src_p, lr=0.1, momentum=0.9)
    _step(src, src_p)
    flat = flat_view(src.state_dict())
    one = [nn.Parameter(torch.randn(3, 2))]
    dst = torch.optim.SGD(one, lr=0.1, momentum=0.9)
    with pytest.raises(StateMismatchError) as err:
        load_param_into_net(dst, flat, strict_load=True)
    assert "state.1: the optimizer has only 1 parameters" in str(err.value)


def test_non_strict_skips_mismatches_and_reports_them() -> None:
    src_p = _params()
    src = torch.optim.SGD(src_p, lr=0.1, momentum=0.9)
    _step(src, src_p)
    flat = flat_view(src.state_dict())
    other = [nn.Parameter(torch.randn(4, 2)), nn.Parameter(torch.randn(3))]
    dst = torch.optim.SGD(other, lr=0.1, momentum=0.9)
    not_loaded, unused = load_param_into_net(dst, flat)
    assert not_loaded == ["state.0"]
    assert unused == ["state.0.momentum_buffer"]
    assert torch.equal(dst.state[other[1]]["momentum_buffer"], src.state[src_p[1]]["momentum_buffer"])


def test_no_optimizer_state_in_the_dict() -> None:
    dst = torch.optim.SGD(_params(), lr=0.1)
    with pytest.raises(StateMismatchError) as err:
        load_param_into_net(dst, {"w": torch.ones(1)}, strict_load=True)
    assert str(err.value) == ("strict load failed; the dict holds no optimizer state "
                              "(no 'optimizer.state.*' or 'state.*' entries)")
    assert load_param_into_net(dst, {"w": torch.ones(1)}) == (["state.0", "state.1"], [])


def test_strict_group_size_mismatch_is_an_error() -> None:
    one = [nn.Parameter(torch.randn(3))]
    src = torch.optim.SGD(one, lr=0.1, momentum=0.9)
    _step(src, one)
    with pytest.raises(ValueError, match="doesn't match the size"):
        torch.optim.SGD([nn.Parameter(torch.randn(3)), nn.Parameter(torch.randn(3))],
                        lr=0.1).load_state_dict(src.state_dict())  # torch itself refuses
    two = [nn.Parameter(torch.randn(3)), nn.Parameter(torch.randn(3))]
    dst = torch.optim.SGD(two, lr=0.1, momentum=0.9)
    with pytest.raises(StateMismatchError):
        load_param_into_net(dst, flat_view(src.state_dict()), strict_load=True)
