"""Files real MindSpore 2.10 wrote load bitwise equal to MindSpore's own load_checkpoint;
damaged ones give typed errors that name the cause (MindSpore loads several silently)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import torchresume as tr
from torchresume.errors import CorruptCheckpointError, DecryptionError, UnsupportedFormatError
from torchresume.format.detect import Kind, detect

from .mindspore_helpers import CBC_KEY, FIXTURES, GCM_KEY, TorchBNNet, assert_same_as_mindspore, expected

STEMS = ["every_dtype", "crc", "gcm", "cbc", "append_dict", "bn_momentum", "bn_adam",
         "bn_adamweightdecay", "split"]


@pytest.mark.parametrize("stem", STEMS)
def test_loads_bitwise_equal_to_mindspore(stem: str) -> None:
    doc, kwargs = expected(stem)
    loaded = tr.load_checkpoint(str(FIXTURES / doc["file"]), **kwargs)
    assert_same_as_mindspore(loaded, doc)


def test_mindspore_safetensors_output_loads_bitwise_equal() -> None:
    doc, _ = expected("every_dtype")  # the same tensors, written with format="safetensors"
    st_doc, _ = expected("every_dtype_safetensors")
    loaded = tr.load_checkpoint(str(FIXTURES / "every_dtype.safetensors"))
    assert_same_as_mindspore(loaded, st_doc)
    assert sorted(st_doc["entries"]) == sorted(doc["entries"])


def test_every_type_and_shape_is_covered() -> None:
    doc, _ = expected("every_dtype")
    types = {e["dtype"] for e in doc["entries"].values()}
    assert types == {"Int8", "UInt8", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64",
                     "Float16", "Float32", "Float64", "Bool", "BFloat16"}
    assert any(e["shape"] == [] for e in doc["entries"].values())  # 0-d scalars
    append, _ = expected("append_dict")
    kinds = {name: (e["kind"], e.get("dtype")) for name, e in append["entries"].items()}
    assert kinds["a_str"] == ("str", None) and kinds["empty_str"] == ("str", None)
    assert kinds["an_int"] == ("tensor", "Int64") and kinds["a_bool"] == ("tensor", "Bool")
    assert kinds["a_float"] == ("tensor", "Float32")  # MindSpore stores Python floats as float32


def test_detected_from_bytes_not_name(tmp_path: Path) -> None:
    for name in ("every_dtype.ckpt", "gcm.ckpt", "cbc.ckpt", "split.ckpt"):
        data = (FIXTURES / name).read_bytes()
        assert detect(data[:9], len(data)) is Kind.MINDSPORE, name
        renamed = tmp_path / (name + ".weird")
        renamed.write_bytes(data)
        kwargs = {"dec_key": GCM_KEY} if name == "gcm.ckpt" else (
            {"dec_key": CBC_KEY, "dec_mode": "AES-CBC"} if name == "cbc.ckpt" else {})
        assert tr.load_checkpoint(str(renamed), **kwargs)


def test_bn_network_and_momentum_load_into_torch() -> None:
    params = tr.load_checkpoint(str(FIXTURES / "bn_momentum.ckpt"))
    net = TorchBNNet()
    not_loaded, unused = tr.load_param_into_net(net, params)
    assert not_loaded == ["bn.num_batches_tracked"]  # MindSpore has no such counter
    assert sorted(unused) == sorted(k for k in params if k.startswith("moments.")
                                    or k in ("global_step", "learning_rate", "momentum"))
    assert torch.equal(net.bn.weight.data, params["bn.gamma"])
    assert torch.equal(net.bn.running_var, params["bn.moving_variance"])  # type: ignore[arg-type]
    assert torch.equal(net.emb.weight.data, params["emb.embedding_table"])
    assert torch.equal(net.ln.bias.data, params["ln.beta"])
    opt = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    assert tr.load_param_into_net(opt, params) == ([], [])
    names = [n for n, _ in net.named_parameters()]
    ms_names = ["conv1.weight", "bn.gamma", "bn.beta", "fc.weight", "fc.bias", "ln.gamma",
                "ln.beta", "emb.embedding_table", "head.weight", "head.bias"]
    assert len(names) == len(ms_names)
    for i, ms_name in enumerate(ms_names):
        buf = opt.state[opt.param_groups[0]["params"][i]]["momentum_buffer"]
        assert torch.equal(buf, params[f"moments.{ms_name}"])
    assert opt.param_groups[0]["lr"] == 0.001  # hyperparameters stay as built


@pytest.mark.parametrize(("stem", "m1", "m2"), [("bn_adam", "moment1", "moment2"),
                                                ("bn_adamweightdecay", "adam_m", "adam_v")])
def test_adam_state_loads_into_torch_adam(stem: str, m1: str, m2: str) -> None:
    params = tr.load_checkpoint(str(FIXTURES / f"{stem}.ckpt"))
    net = TorchBNNet()
    tr.load_param_into_net(net, params)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    assert tr.load_param_into_net(opt, params)[0] == []
    first = opt.state[next(iter(net.parameters()))]
    assert torch.equal(first["exp_avg"], params[f"{m1}.conv1.weight"])
    assert torch.equal(first["exp_avg_sq"], params[f"{m2}.conv1.weight"])
    assert float(first["step"]) == 3.0 == float(params["global_step"][0])
    net(torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.long)).sum().backward()
    opt.step()  # and it trains on


def test_momentum_state_refuses_adam() -> None:
    params = tr.load_checkpoint(str(FIXTURES / "bn_momentum.ckpt"))
    opt = torch.optim.Adam(TorchBNNet().parameters())
    with pytest.raises(tr.StateMismatchError,
                       match="the checkpoint holds MindSpore Momentum state, which maps to torch "
                             "SGD, not Adam; build a SGD"):
        tr.load_param_into_net(opt, params)


# -- damaged files (point 4): the exact messages ------------------------------------------

def _path(name: str) -> str:
    return str(FIXTURES / name)


def test_empty_file() -> None:
    with pytest.raises(CorruptCheckpointError, match=r"empty.ckpt: the file is empty \(0 bytes\)"):
        tr.load_checkpoint(_path("empty.ckpt"))


def test_truncated_file() -> None:
    with pytest.raises(CorruptCheckpointError) as info:
        tr.load_checkpoint(_path("truncated.ckpt"))
    assert str(info.value).startswith(f"{_path('truncated.ckpt')}: truncated: ")
    assert "the write was cut off (use an older checkpoint)" in str(info.value)


def test_crc_mismatch_is_caught_without_asking() -> None:
    # MindSpore loads this file silently unless crc_check=True (see damaged.json).
    with pytest.raises(CorruptCheckpointError) as info:
        tr.load_checkpoint(_path("crc_mismatch.ckpt"))
    msg = str(info.value)
    assert msg.startswith(f"{_path('crc_mismatch.ckpt')}: CRC mismatch: the footer says 0x")
    assert msg.endswith("the file was modified or damaged after it was written (restore it from "
                        "a copy or use an older checkpoint)")


def test_wrong_key_and_tampered_ciphertext() -> None:
    want = f"{_path('gcm.ckpt')}: decryption failed (AES-GCM): the key is wrong or the file was modified"
    with pytest.raises(DecryptionError) as info:
        tr.load_checkpoint(_path("gcm.ckpt"), dec_key=bytes(16))
    assert str(info.value) == want
    with pytest.raises(DecryptionError) as info:
        tr.load_checkpoint(_path("tampered_gcm.ckpt"), dec_key=GCM_KEY)
    assert str(info.value) == want.replace("gcm.ckpt", "tampered_gcm.ckpt")
    with pytest.raises(DecryptionError, match="the key is wrong or the file was modified"):
        tr.load_checkpoint(_path("cbc.ckpt"), dec_key=bytes(32), dec_mode="AES-CBC")
    with pytest.raises(DecryptionError) as info:
        tr.load_checkpoint(_path("gcm.ckpt"))
    assert str(info.value) == (f"{_path('gcm.ckpt')}: the checkpoint is encrypted (MindSpore "
                               "AES-GCM); pass dec_key=<the key used to save it>")


def test_unknown_tensor_type() -> None:
    with pytest.raises(UnsupportedFormatError) as info:
        tr.load_checkpoint(_path("unknown_type.ckpt"))
    assert str(info.value) == (
        f"{_path('unknown_type.ckpt')}: the tensor 'w' has the tensor type 'Complex256', which "
        "torchresume does not read (known: Int8, UInt8, Int16, UInt16, Int32, UInt32, Int64, "
        "UInt64, Float16, Float32, Float64, Bool, BFloat16, str)")


def test_content_length_must_match_shape() -> None:
    with pytest.raises(CorruptCheckpointError) as info:
        tr.load_checkpoint(_path("short_content.ckpt"))
    assert str(info.value) == (
        f"{_path('short_content.ckpt')}: the tensor 'w' has 20 bytes of content but its shape "
        "and type need 24; the file is damaged or truncated (MindSpore would silently pad it)")
    with pytest.raises(CorruptCheckpointError) as info:
        tr.load_checkpoint(_path("long_content.ckpt"))
    assert str(info.value) == (
        f"{_path('long_content.ckpt')}: the tensor 'w' has 28 bytes of content but its shape "
        "[2, 3] and type Float32 need 24; the file is damaged (MindSpore would silently cut it)")


def test_cut_between_entries_is_not_detectable() -> None:
    """Documented limit: without a CRC footer, a file cut between two entries is a valid,
    smaller checkpoint (MindSpore loads it too)."""
    assert list(tr.load_checkpoint(_path("cut_between_entries.ckpt"))) == ["t.Int8"]


def test_crc_checked_on_a_copy(tmp_path: Path) -> None:
    path = tmp_path / "c.ckpt"
    shutil.copy(FIXTURES / "crc.ckpt", path)
    assert tr.load_checkpoint(str(path))
    assert tr.load_checkpoint(str(FIXTURES / "crc_mismatch.ckpt"), crc_check=False)  # opt-out


def test_huge_dims_are_refused_before_allocating(tmp_path: Path) -> None:
    from torchresume.format.mindspore import _value_parts
    parts = _value_parts("w", "Float32", [2 ** 47], memoryview(bytes(8)))
    (tmp_path / "h.ckpt").write_bytes(b"".join(bytes(p) for p in parts))
    with pytest.raises(CorruptCheckpointError, match="the tensor 'w' has 8 bytes of content but "
                                                     "its shape and type need 562949953421312"):
        tr.load_checkpoint(str(tmp_path / "h.ckpt"))
