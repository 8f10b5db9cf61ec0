"""CheckpointConfig(format="ckpt"): ModelCheckpoint writes MindSpore protobuf files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import torchresume as tr
from torchresume.app.models import LeNet5
from torchresume.data import ArrayDataset
from torchresume.format.detect import Kind, detect


def _data() -> ArrayDataset:
    g = torch.Generator().manual_seed(0)
    return ArrayDataset(torch.randn(64, 1, 32, 32, generator=g), torch.randint(0, 10, (64,), generator=g),
                        batch_size=16)


@pytest.mark.parametrize("extra", [{"crc_check": True},
                                   {"enc_key": bytes(range(16)), "enc_mode": "AES-CBC"}])
def test_model_checkpoint_writes_mindspore_files(tmp_path: Path, extra: dict) -> None:
    torch.manual_seed(0)
    net = LeNet5()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    config = tr.CheckpointConfig(save_checkpoint_steps=4, keep_checkpoint_max=2, format="ckpt",
                                 append_info=["epoch_num", "step_num"], **extra)
    cb = tr.ModelCheckpoint("lenet", str(tmp_path), config)
    tr.Model(net, nn.CrossEntropyLoss(), opt).train(2, _data(), callbacks=[cb])
    names = sorted(p.name for p in tmp_path.glob("*.ckpt"))
    assert names == ["lenet-1_4.ckpt", "lenet-2_4.ckpt"]
    path = tmp_path / "lenet-2_4.ckpt"
    data = path.read_bytes()
    assert detect(data[:9], len(data)) is Kind.MINDSPORE
    params = tr.load_checkpoint(str(path), dec_key=extra.get("enc_key"),
                                dec_mode=extra.get("enc_mode", "AES-GCM"))
    assert int(params["epoch_num"]) == 2 and int(params["step_num"]) == 8
    assert int(params["global_step"][0]) == 8
    assert torch.equal(params["fc1.weight"], net.fc1.weight.data)
    assert torch.equal(params["moments.fc1.weight"], opt.state[net.fc1.weight]["momentum_buffer"])
    assert "conv1.bias" not in params  # the seed's LeNet5: no conv biases


def test_default_format_is_still_torchresume(tmp_path: Path) -> None:
    assert tr.CheckpointConfig().format is None
    with pytest.raises(tr.CheckpointConfigError, match="format must be 'ckpt' or "
                                                              "'safetensors', got 'onnx'"):
        tr.CheckpointConfig(format="onnx")
    with pytest.raises(ValueError, match="crc_check=True together with enc_key"):
        tr.CheckpointConfig(format="ckpt", enc_key=bytes(16), crc_check=True)
    with pytest.raises(ValueError, match="enc_mode='AES-CBC' is not supported; use 'AES-GCM'"):
        tr.CheckpointConfig(enc_key=bytes(16), enc_mode="AES-CBC")  # native files: GCM only
