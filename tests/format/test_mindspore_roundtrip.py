"""Files torchresume writes with format="ckpt" load in REAL MindSpore 2.10 into the matching
network and optimizer, nothing left unloaded, values bitwise equal.

Runs when the MindSpore venv exists (bash scripts/setup_mindspore.sh); MindSpore runs in a
subprocess of its own interpreter (it needs numpy<2). Prints MindSpore's report with -s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import torchresume as tr
from torchresume.files import mindspore_io

from .mindspore_helpers import CBC_KEY, GCM_KEY, needs_mindspore, raw, run_mindspore, trained_twin

VARIANTS: dict[str, dict[str, Any]] = {"plain": {}, "crc": {"crc_check": True},
            "gcm": {"enc_key": GCM_KEY, "enc_mode": "AES-GCM"},
            "cbc": {"enc_key": CBC_KEY, "enc_mode": "AES-CBC"}}


@needs_mindspore
def test_every_file_torchresume_writes_loads_in_mindspore(tmp_path: Path) -> None:
    jobs, expected = [], []
    for optimizer in ("momentum", "adam"):
        net, opt = trained_twin(optimizer)
        entries = mindspore_io.entries_of((net, opt))
        for variant, kwargs in VARIANTS.items():
            path = tmp_path / f"{optimizer}-{variant}.ckpt"
            tr.save_checkpoint((net, opt), str(path), format="ckpt", **kwargs)
            key = kwargs.get("enc_key")
            jobs.append({"ckpt": str(path), "net": "bnnet", "optimizer": optimizer,
                         "dec_key_hex": key.hex() if isinstance(key, bytes) else None,
                         "dec_mode": kwargs.get("enc_mode", "AES-GCM"),
                         "npz": str(tmp_path / f"{optimizer}-{variant}.npz")})
            expected.append(entries)
            # and torchresume reads back what it wrote, bitwise
            back = tr.load_checkpoint(str(path), dec_key=key, dec_mode=kwargs.get("enc_mode", "AES-GCM"))
            assert all(raw(back[k]) == raw(v) for k, v in entries.items())
    reports = run_mindspore(jobs, tmp_path)
    for job, report, entries in zip(jobs, reports, expected, strict=True):
        print(f"MindSpore 2.10 loaded {job['ckpt'].rsplit('/', 1)[-1]}: net not loaded "
              f"{report.get('net_not_loaded')}, optimizer not loaded {report.get('opt_not_loaded')}")
        assert report["ok"], report.get("error")
        assert report["net_not_loaded"] == [] and report["opt_not_loaded"] == []
        assert sorted(report["ckpt_not_loaded_by_net"]) == sorted(
            k for k in entries if not _is_net_name(k))  # the optimizer's entries, only
        loaded = np.load(job["npz"])
        assert sorted(loaded.files) == sorted(entries), job["ckpt"]
        for name, value in entries.items():
            assert loaded[name].tobytes() == raw(value), f"{job['ckpt']}: {name} differs"


def _is_net_name(name: str) -> bool:
    return not name.startswith(("moments.", "moment1.", "moment2.")) and name not in (
        "global_step", "learning_rate", "momentum", "beta1_power", "beta2_power")


@needs_mindspore
def test_lenet5_written_by_torchresume_loads_in_mindspore(tmp_path: Path) -> None:
    from torchresume.app.models import LeNet5
    torch.manual_seed(0)
    net = LeNet5()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    net(torch.rand(2, 1, 32, 32)).sum().backward()
    opt.step()
    path = tmp_path / "lenet.ckpt"
    tr.save_checkpoint((net, opt), str(path), format="ckpt")
    [report] = run_mindspore([{"ckpt": str(path), "net": "lenet5", "optimizer": "momentum",
                               "npz": str(tmp_path / "l.npz")}], tmp_path)
    assert report["ok"], report.get("error")
    assert report["net_not_loaded"] == [] and report["opt_not_loaded"] == []
    loaded = np.load(tmp_path / "l.npz")
    assert loaded["conv1.weight"].tobytes() == raw(net.conv1.weight.data)


def test_writer_reproduces_mindspore_bytes() -> None:
    """Re-encoding what MindSpore wrote gives MindSpore's exact bytes (plain and CRC)."""
    from .mindspore_helpers import FIXTURES
    for name, crc in (("every_dtype.ckpt", False), ("crc.ckpt", True),
                      ("append_dict.ckpt", False), ("bn_momentum.ckpt", False)):
        loaded = tr.load_checkpoint(str(FIXTURES / name))
        parts = mindspore_io.encode(loaded, crc_check=crc)
        assert b"".join(bytes(p) for p in parts) == (FIXTURES / name).read_bytes(), name


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_roundtrip_in_torchresume(tmp_path: Path, variant: str) -> None:
    net, opt = trained_twin("momentum")
    path = tmp_path / "x.ckpt"
    kwargs = VARIANTS[variant]
    tr.save_checkpoint((net, opt), str(path), format="ckpt", append_dict={"epoch_num": 3},
                       **kwargs)
    params = tr.load_checkpoint(str(path), dec_key=kwargs.get("enc_key"),
                                dec_mode=kwargs.get("enc_mode", "AES-GCM"))
    assert int(params["epoch_num"]) == 3
    net2, _ = trained_twin("momentum", steps=0)
    opt2 = torch.optim.SGD(net2.parameters(), lr=0.01, momentum=0.9)
    assert tr.load_param_into_net(net2, params)[0] == ["bn.num_batches_tracked"]
    assert tr.load_param_into_net(opt2, params) == ([], [])
    for a, b in zip(net.state_dict().values(), net2.state_dict().values(), strict=True):
        if a.dtype != torch.int64:
            assert torch.equal(a, b)
    for p, q in zip(net.parameters(), net2.parameters(), strict=True):
        assert torch.equal(opt.state[p]["momentum_buffer"], opt2.state[q]["momentum_buffer"])


def test_split_tensors_are_written_and_joined(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchresume.format import mindspore
    monkeypatch.setattr(mindspore, "SPLIT", 64)
    t = torch.arange(100, dtype=torch.float32).reshape(10, 10)
    tr.save_checkpoint({"big": t, "x": torch.ones(2)}, str(tmp_path / "s.ckpt"), format="ckpt",
                       crc_check=True)
    entries = mindspore.scan(open(tmp_path / "s.ckpt", "rb"), (tmp_path / "s.ckpt").stat().st_size,
                             "s")
    assert [(e.name, len(e.pieces)) for e in entries] == [("big", 7), ("x", 1)]
    back = tr.load_checkpoint(str(tmp_path / "s.ckpt"))
    assert torch.equal(back["big"], t)


def test_written_atomically_read_only(tmp_path: Path) -> None:
    path = tmp_path / "m.ckpt"
    net, _ = trained_twin("momentum", steps=0)
    tr.save_checkpoint(net, str(path), format="ckpt")
    assert (path.stat().st_mode & 0o777) == 0o400
    assert [p.name for p in tmp_path.iterdir()] == ["m.ckpt"]


def test_bad_arguments() -> None:
    net, _ = trained_twin("momentum", steps=0)
    with pytest.raises(ValueError, match="crc_check=True together with enc_key writes a file "
                                         "MindSpore cannot load back"):
        tr.save_checkpoint(net, "/tmp/never.ckpt", format="ckpt", crc_check=True, enc_key=GCM_KEY)
    with pytest.raises(ValueError, match="enc_mode='SM4-CBC' is not supported for MindSpore"):
        tr.save_checkpoint(net, "/tmp/never.ckpt", format="ckpt", enc_key=GCM_KEY, enc_mode="SM4-CBC")
