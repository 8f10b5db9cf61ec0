"""save_checkpoint / load_checkpoint / load_param_into_net."""

from __future__ import annotations

import os
import stat
import threading

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import torchresume as tr
from tests.conftest import TinyNet


def test_module_round_trip_is_exact(tmp_path, trained) -> None:
    net, _ = trained
    path = str(tmp_path / "m.ckpt")
    tr.save_checkpoint(net, path)
    fresh = TinyNet()
    param_not_load, ckpt_not_load = tr.load_param_into_net(fresh, tr.load_checkpoint(path))
    assert (param_not_load, ckpt_not_load) == ([], [])
    for k, v in net.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k


def test_file_is_plain_safetensors_and_read_only(tmp_path, net) -> None:
    path = str(tmp_path / "m.ckpt")
    tr.save_checkpoint(net, path)
    with safe_open(path, "pt") as f:
        assert set(f.keys()) == set(net.state_dict())
        assert torch.equal(f.get_tensor("fc1.weight"), net.fc1.weight.detach())
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o400
    tr.save_checkpoint(net, path)  # overwriting a read-only checkpoint works
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o400


def test_same_dict_loads_into_net_and_optimizer(tmp_path, trained) -> None:
    net, opt = trained
    path = str(tmp_path / "full.ckpt")
    tr.save_checkpoint({**net.state_dict(), "optimizer": opt.state_dict()}, path)
    params = tr.load_checkpoint(path)
    fresh = TinyNet()
    opt2 = torch.optim.SGD(fresh.parameters(), lr=0.001, momentum=0.9)
    tr.load_param_into_net(fresh, params)
    not_loaded, _ = tr.load_param_into_net(opt2, params)
    assert not_loaded == []
    for i, p in enumerate(net.parameters()):
        assert torch.equal(opt2.state_dict()["state"][i]["momentum_buffer"],
                           opt.state_dict()["state"][i]["momentum_buffer"])
    # the optimizer keeps the rate it was built with (docs/concepts/exact-resume.md: a new optimizer keeps its lr)
    assert opt2.param_groups[0]["lr"] == 0.001


def test_saved_optimizer_loads_into_adam(tmp_path, net) -> None:
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.randn(4, 4)).sum().backward()
    opt.step()
    path = str(tmp_path / "opt.ckpt")
    tr.save_checkpoint(opt, path)
    opt2 = torch.optim.Adam(net.parameters(), lr=1e-3)
    assert tr.load_param_into_net(opt2, tr.load_checkpoint(path)) == ([], [])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_append_dict_round_trip(tmp_path, net) -> None:
    path = str(tmp_path / "a.ckpt")
    tr.save_checkpoint(net, path, append_dict={"epoch_num": 3, "lr": 0.5, "tag": "x", "ok": True})
    d = tr.load_checkpoint(path)
    assert (d["epoch_num"], d["lr"], d["tag"], d["ok"]) == (3, 0.5, "x", True)


def test_append_dict_rejects_other_types(tmp_path, net) -> None:
    with pytest.raises(TypeError, match=r"append_dict\['x'\] is a list; values must be int, "
                                        r"float, bool or str"):
        tr.save_checkpoint(net, str(tmp_path / "a.ckpt"), append_dict={"x": [1]})


def test_filters(tmp_path, net) -> None:
    path = str(tmp_path / "m.ckpt")
    tr.save_checkpoint(net, path)
    assert set(tr.load_checkpoint(path, filter_prefix="bn")) == {
        "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    assert set(tr.load_checkpoint(path, specify_prefix=["fc2."])) == {"fc2.weight", "fc2.bias"}
    assert set(tr.load_checkpoint(path, choice_func=lambda n: n.endswith("bias"))) == {
        "fc1.bias", "bn.bias", "fc2.bias"}
    with pytest.raises(ValueError, match="nothing left to load"):
        tr.load_checkpoint(path, specify_prefix="nope")


def test_choice_func_on_save(tmp_path, net) -> None:
    path = str(tmp_path / "m.ckpt")
    tr.save_checkpoint(net, path, choice_func=lambda n: n.startswith("fc1"))
    assert set(tr.load_checkpoint(path)) == {"fc1.weight", "fc1.bias"}


def test_fine_tuning_new_head_skips_shape_mismatch(tmp_path, net) -> None:
    path = str(tmp_path / "m.ckpt")
    tr.save_checkpoint(net, path)
    other = TinyNet()
    other.fc2 = nn.Linear(8, 5)
    with pytest.warns(UserWarning, match=r"fc2.weight: checkpoint \(3, 8\) vs net \(5, 8\)"):
        not_loaded, unused = tr.load_param_into_net(other, tr.load_checkpoint(path))
    assert not_loaded == ["fc2.weight", "fc2.bias"]
    assert unused == ["fc2.weight", "fc2.bias"]
    assert torch.equal(other.fc1.weight, net.fc1.weight)


def test_strict_load_lists_every_difference_and_loads_nothing(tmp_path, net) -> None:
    path = str(tmp_path / "m.ckpt")
    tr.save_checkpoint(net, path)
    other = TinyNet()
    other.fc2 = nn.Linear(8, 5)
    other.extra = nn.Linear(1, 1)
    before = other.fc1.weight.detach().clone()
    with pytest.raises(tr.StateMismatchError) as err:
        tr.load_checkpoint(path, net=other, strict_load=True)
    msg = str(err.value)
    assert "missing from checkpoint (2): extra.weight, extra.bias" in msg
    assert "fc2.weight: checkpoint (3, 8) vs net (5, 8)" in msg
    assert torch.equal(other.fc1.weight, before)


def test_non_strict_casts_float_dtypes(tmp_path, net) -> None:
    path = str(tmp_path / "h.ckpt")
    tr.save_checkpoint({k: v.half() if v.is_floating_point() else v
                        for k, v in net.state_dict().items()}, path)
    fresh = TinyNet()
    assert tr.load_param_into_net(fresh, tr.load_checkpoint(path)) == ([], [])
    assert fresh.fc1.weight.dtype == torch.float32
    assert torch.allclose(fresh.fc1.weight, net.fc1.weight, atol=1e-3)


def test_loads_plain_safetensors_and_torch_files(tmp_path, net) -> None:
    st, pt = str(tmp_path / "w.safetensors"), str(tmp_path / "w.pth")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, st)
    torch.save(net.state_dict(), pt)
    for path in (st, pt):
        fresh = TinyNet()
        assert tr.load_param_into_net(fresh, tr.load_checkpoint(path)) == ([], [])
        assert torch.equal(fresh.fc2.bias, net.fc2.bias)


def test_format_is_detected_from_bytes_not_extension(tmp_path, net) -> None:
    path = str(tmp_path / "misnamed.safetensors")
    torch.save(net.state_dict(), path)
    assert "fc1.weight" in tr.load_checkpoint(path)


def test_list_of_name_data_dicts(tmp_path) -> None:
    path = str(tmp_path / "l.ckpt")
    tr.save_checkpoint([{"name": "w", "data": torch.ones(2)}], path)
    assert torch.equal(tr.load_checkpoint(path)["w"], torch.ones(2))


def test_bfloat16_and_bool_round_trip(tmp_path) -> None:
    path = str(tmp_path / "d.ckpt")
    data = {"b": torch.randn(3).bfloat16(), "m": torch.tensor([True, False]),
            "i8": torch.arange(3, dtype=torch.int8), "empty": torch.zeros(0, 4)}
    tr.save_checkpoint(data, path)
    back = tr.load_checkpoint(path)
    for k, v in data.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v)


def test_async_save_snapshots_and_waits(tmp_path, net) -> None:
    path = str(tmp_path / "async.ckpt")
    expected = net.fc1.weight.detach().clone()
    tr.save_checkpoint(net, path, async_save=True)
    with torch.no_grad():
        net.fc1.weight.add_(1.0)  # training continues while the file is written
    tr.wait_async_saves()
    assert torch.equal(tr.load_checkpoint(path)["fc1.weight"], expected)


class HeldApiWrites:
    """Holds every api background write until released: a slow disk, made deterministic."""

    def __init__(self, monkeypatch) -> None:
        from torchresume import api
        self.gate, self.started = threading.Event(), threading.Event()
        real = api.write_encoded

        def held(*args, **kwargs):
            self.started.set()
            assert self.gate.wait(30), "the held write was never released"
            return real(*args, **kwargs)
        monkeypatch.setattr(api, "write_encoded", held)


def _snapshot(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_async_saves_reuse_the_staging_buffers_and_each_file_is_its_own_snapshot(tmp_path, net,
                                                                                 monkeypatch) -> None:
    """The second async save of the same layout copies into the first one's buffers (no allocation):
    it first waits for the first write, held here until after the weights changed, so both files
    hold the state at their own save call, bit for bit."""
    from torchresume import api
    tr.wait_async_saves()
    held = HeldApiWrites(monkeypatch)
    first, second = str(tmp_path / "e1.ckpt"), str(tmp_path / "e2.ckpt")
    at_first = _snapshot(net)
    tr.save_checkpoint(net, first, async_save=True)
    allocations = api._slot._stager.allocations
    assert held.started.wait(10)  # the first write runs (held) from here on
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(-3.0).add_(1.0)  # training goes on right after save_checkpoint returned
    at_second = _snapshot(net)
    release = threading.Timer(0.2, held.gate.set)
    release.start()
    tr.save_checkpoint(net, second, async_save=True)  # waits for the first write: its buffers
    assert held.gate.is_set()
    assert api._slot._stager.allocations == allocations  # the same buffers, not allocated again
    with torch.no_grad():
        for p in net.parameters():
            p.add_(7.0)
    tr.wait_async_saves()
    release.join()
    for path, expected in ((first, at_first), (second, at_second)):
        loaded = tr.load_checkpoint(path)
        assert set(loaded) == set(expected)
        for name, value in expected.items():
            assert torch.equal(loaded[name], value), (path, name)  # bitwise, the state at save time


def test_async_saves_of_two_layouts_alternately_reallocate_and_stay_exact(tmp_path, net) -> None:
    from torchresume import api
    other = {"w": torch.randn(7, 3), "i": torch.arange(5)}
    tr.wait_async_saves()
    before = api._slot._stager.allocations
    for i in range(2):
        tr.save_checkpoint(net, str(tmp_path / f"net{i}.ckpt"), async_save=True)
        tr.save_checkpoint(other, str(tmp_path / f"other{i}.ckpt"), async_save=True)
    tr.wait_async_saves()
    assert api._slot._stager.allocations - before in (3, 4)  # every switch of layout (the first maybe not)
    for i in range(2):
        for name, value in net.state_dict().items():
            assert torch.equal(tr.load_checkpoint(str(tmp_path / f"net{i}.ckpt"))[name], value)
        back = tr.load_checkpoint(str(tmp_path / f"other{i}.ckpt"))
        assert all(torch.equal(back[k], v) for k, v in other.items())


def test_async_error_surfaces_on_wait(tmp_path, net) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    tr.save_checkpoint(net, str(blocker / "sub" / "a.ckpt"), async_save=True)
    with pytest.raises(tr.AsyncSaveError, match="background save of .*a.ckpt failed"):
        tr.wait_async_saves()


def test_bad_arguments(tmp_path, net) -> None:
    with pytest.raises(TypeError, match="save_obj must be an nn.Module"):
        tr.save_checkpoint(3, str(tmp_path / "x.ckpt"))
    with pytest.raises(ValueError, match="format='onnx' is not supported; use 'safetensors'"):
        tr.save_checkpoint(net, str(tmp_path / "x.ckpt"), format="onnx")
    with pytest.raises(TypeError, match="net must be an nn.Module or a torch.optim.Optimizer"):
        tr.load_param_into_net("net", {})
    with pytest.raises(tr.CheckpointNotFoundError, match="no such checkpoint file"):
        tr.load_checkpoint(str(tmp_path / "absent.ckpt"))
    with pytest.raises(TypeError, match="complex"):
        tr.save_checkpoint({"c": torch.zeros(2, dtype=torch.complex64)}, str(tmp_path / "c.ckpt"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors_save_and_load_to_cuda_net(tmp_path) -> None:
    net = TinyNet().cuda()
    path = str(tmp_path / "cuda.ckpt")
    tr.save_checkpoint(net, path)
    target = TinyNet().cuda()
    tr.load_checkpoint(path, net=target, strict_load=True)
    assert torch.equal(target.fc1.weight, net.fc1.weight)
