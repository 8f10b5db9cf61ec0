"""Write the MindSpore fixtures under tests/fixtures/mindspore/ with REAL MindSpore.

Run with the MindSpore interpreter (bash scripts/setup_mindspore.sh prints it):

    ~/.cache/torchresume/mindspore-venv/bin/python scripts/make_mindspore_fixtures.py

For every fixture ``X.ckpt`` (or ``X.safetensors``) it also records what
MindSpore's own ``load_checkpoint`` returns, so the tests compare against
MindSpore without needing it: ``expected/X.json`` (per entry: kind, MindSpore
dtype, shape; strings by value) and ``expected/X.npz`` (each tensor's raw
little-endian bytes as uint8). For the damaged files it records what MindSpore
does with them (loads silently, or the error it raises) in ``damaged.json``.
Everything is seeded; the files are small.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn
from mindspore.train import checkpoint_pb2

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "mindspore")
GCM_KEY = bytes(range(16))
CBC_KEY = bytes(range(32))

NP_TYPES = {"Int8": np.int8, "UInt8": np.uint8, "Int16": np.int16, "UInt16": np.uint16,
            "Int32": np.int32, "UInt32": np.uint32, "Int64": np.int64, "UInt64": np.uint64,
            "Float16": np.float16, "Float32": np.float32, "Float64": np.float64}


def path(name: str) -> str:
    return os.path.join(OUT, name)


def record(name: str, **load_kwargs: object) -> None:
    """Store MindSpore's own load_checkpoint result for fixture ``name``."""
    loaded = ms.load_checkpoint(path(name), **load_kwargs)
    manifest: dict[str, dict[str, object]] = {}
    arrays: dict[str, np.ndarray] = {}
    for i, (key, value) in enumerate(loaded.items()):
        if isinstance(value, str):
            manifest[key] = {"kind": "str", "value": value}
            continue
        array = value.asnumpy()
        manifest[key] = {"kind": "tensor", "dtype": str(value.dtype), "shape": list(array.shape),
                         "npz": f"t{i}"}
        arrays[f"t{i}"] = np.frombuffer(np.ascontiguousarray(array).tobytes(), np.uint8)
    stem = name[:-len(".ckpt")] if name.endswith(".ckpt") else name.replace(".", "_")
    with open(path(f"expected/{stem}.json"), "w") as f:
        json.dump({"file": name, "load_kwargs": {k: (v.hex() if isinstance(v, bytes) else v)
                                                 for k, v in load_kwargs.items()},
                   "entries": manifest}, f, indent=1, sort_keys=False)
    np.savez(path(f"expected/{stem}.npz"), **arrays)


def every_dtype() -> list[dict[str, object]]:
    rng = np.random.default_rng(0)
    items: list[dict[str, object]] = []
    for type_name, np_type in NP_TYPES.items():
        if np.issubdtype(np_type, np.integer):
            info = np.iinfo(np_type)
            a = np.array([info.min, info.max, 0, 1, 7, info.max // 3], dtype=np_type).reshape(2, 3)
        else:
            a = rng.standard_normal((2, 3)).astype(np_type)
            a[0, 0] = np.finfo(np_type).max
            a[0, 1] = np.finfo(np_type).tiny
        items.append({"name": f"t.{type_name}", "data": Tensor(a)})
        items.append({"name": f"scalar.{type_name}", "data": Tensor(np_type(3))})
    items.append({"name": "t.Bool", "data": Tensor(np.array([[True, False, True]]))})
    items.append({"name": "scalar.Bool", "data": Tensor(np.bool_(True))})
    bf = Tensor(rng.standard_normal((3, 4)).astype(np.float32)).astype(ms.bfloat16)
    items.append({"name": "t.BFloat16", "data": bf})
    items.append({"name": "scalar.BFloat16", "data": Tensor(np.float32(1.5)).astype(ms.bfloat16)})
    items.append({"name": "t.4d", "data": Tensor(rng.standard_normal((2, 1, 3, 2)).astype(np.float32))})
    return items


class BNNet(nn.Cell):
    """Conv (no bias) + BatchNorm + LayerNorm + Embedding + Dense: every name rule."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, pad_mode="valid")
        self.bn = nn.BatchNorm2d(4)
        self.flatten = nn.Flatten()
        self.fc = nn.Dense(4 * 6 * 6, 8)
        self.ln = nn.LayerNorm((8,))
        self.emb = nn.Embedding(10, 8)
        self.head = nn.Dense(8, 3)

    def construct(self, x: Tensor, idx: Tensor) -> Tensor:
        y = self.ln(self.fc(self.flatten(self.bn(self.conv1(x)))))
        return self.head(y + self.emb(idx))


class WithLoss(nn.Cell):
    """nn.WithLossCell for a two-input network; no name prefix, like WithLossCell."""

    def __init__(self, net: nn.Cell) -> None:
        super().__init__(auto_prefix=False)
        self.net = net
        self.loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")

    def construct(self, x: Tensor, idx: Tensor, y: Tensor) -> Tensor:
        return self.loss(self.net(x, idx), y)


def trained(optimizer: str) -> None:
    """BNNet trained 3 steps with ``optimizer``; the training network is saved (net + optimizer)."""
    ms.set_seed(1)
    np.random.seed(1)
    net = BNNet()
    params = net.trainable_params()
    opt = {"momentum": lambda: nn.Momentum(params, 0.01, 0.9),
           "adam": lambda: nn.Adam(params, 0.001),
           "adamweightdecay": lambda: nn.AdamWeightDecay(params, 0.001, weight_decay=0.01)}[optimizer]()
    train = nn.TrainOneStepCell(WithLoss(net), opt)
    train.set_train()
    rng = np.random.default_rng(2)
    for _ in range(3):
        train(Tensor(rng.random((4, 1, 8, 8), dtype=np.float32)),
              Tensor(rng.integers(0, 10, (4,)).astype(np.int32)),
              Tensor(rng.integers(0, 3, (4,)).astype(np.int32)))
    ms.save_checkpoint(train, path(f"bn_{optimizer}.ckpt"))
    record(f"bn_{optimizer}.ckpt")


def split_by_hand() -> None:
    """Same-tag split entries as MindSpore writes them for tensors over 512 MiB.

    MindSpore only splits above 512 MiB, far too big for a fixture, so this file
    is built with MindSpore's own protobuf classes: two Values with the tag
    'big' and the full dims, the content cut in two, then an ordinary entry.
    """
    a = np.arange(40, dtype=np.float32).reshape(4, 10)
    raw = a.tobytes()
    with open(path("split.ckpt"), "wb") as f:
        for tag, content, dims in (("big", raw[:64], [4, 10]), ("big", raw[64:], [4, 10]),
                                   ("after", np.float32(2).tobytes(), [])):
            msg = checkpoint_pb2.Checkpoint()
            value = msg.value.add()
            value.tag = tag
            value.tensor.dims.extend(dims)
            value.tensor.tensor_type = "Float32"
            value.tensor.tensor_content = content
            f.write(msg.SerializeToString())
    record("split.ckpt")


def damaged() -> None:
    """The files of point 4, and what MindSpore itself does with each."""
    good = open(path("crc.ckpt"), "rb").read()
    plain = open(path("every_dtype.ckpt"), "rb").read()
    gcm = open(path("gcm.ckpt"), "rb").read()
    parsed = checkpoint_pb2.Checkpoint()
    parsed.ParseFromString(good[:-17])
    at = good.index(parsed.value[0].tensor.tensor_content) + 2  # a byte of tensor data
    files = {
        "empty.ckpt": b"",
        "truncated.ckpt": plain[: len(plain) // 2],
        "crc_mismatch.ckpt": good[:at] + bytes([good[at] ^ 0x01]) + good[at + 1:],
        "tampered_gcm.ckpt": gcm[:-5] + bytes([gcm[-5] ^ 0x01]) + gcm[-4:],
    }
    msg = checkpoint_pb2.Checkpoint()
    v = msg.value.add()
    v.tag, v.tensor.tensor_type, v.tensor.tensor_content = "w", "Complex256", b"\0" * 32
    v.tensor.dims.extend([2])
    files["unknown_type.ckpt"] = msg.SerializeToString()
    msg = checkpoint_pb2.Checkpoint()
    v = msg.value.add()
    v.tag, v.tensor.tensor_type, v.tensor.tensor_content = "w", "Float32", b"\0" * 20
    v.tensor.dims.extend([2, 3])  # needs 24 bytes, holds 20: MindSpore pads silently
    files["short_content.ckpt"] = msg.SerializeToString()
    v.tensor.tensor_content = b"\0" * 28  # holds 28: MindSpore cuts silently
    files["long_content.ckpt"] = msg.SerializeToString()
    # Cut exactly between two entries, no CRC: undetectable (loads the first entries).
    first = checkpoint_pb2.Checkpoint()
    first.ParseFromString(plain)
    one = checkpoint_pb2.Checkpoint()
    one.value.append(first.value[0])
    files["cut_between_entries.ckpt"] = one.SerializeToString()
    outcome: dict[str, str] = {}
    for name, data in files.items():
        with open(path(name), "wb") as f:
            f.write(data)
        kwargs = {"dec_key": GCM_KEY} if "gcm" in name else {}
        try:
            loaded = ms.load_checkpoint(path(name), **kwargs)
            outcome[name] = f"loaded {len(loaded)} entries: {sorted(loaded)[:4]}"
        except Exception as exc:
            outcome[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    try:
        ms.load_checkpoint(path("gcm.ckpt"), dec_key=bytes(16))
        outcome["gcm.ckpt with a wrong key"] = "loaded"
    except Exception as exc:
        outcome["gcm.ckpt with a wrong key"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    with open(path("damaged.json"), "w") as f:
        json.dump(outcome, f, indent=1)


def main() -> int:
    os.makedirs(path("expected"), exist_ok=True)
    for directory in (OUT, path("expected")):  # start clean (MindSpore writes files 0400)
        for name in os.listdir(directory):
            if os.path.isfile(os.path.join(directory, name)):
                os.chmod(os.path.join(directory, name), 0o600)
                os.remove(os.path.join(directory, name))
    ms.set_context(mode=ms.PYNATIVE_MODE, device_target="CPU")
    items = every_dtype()
    ms.save_checkpoint(items, path("every_dtype.ckpt"))
    record("every_dtype.ckpt")
    small = items[:4]
    ms.save_checkpoint(small, path("crc.ckpt"), crc_check=True)
    record("crc.ckpt", crc_check=True)
    ms.save_checkpoint(small, path("gcm.ckpt"), enc_key=GCM_KEY, enc_mode="AES-GCM")
    record("gcm.ckpt", dec_key=GCM_KEY, dec_mode="AES-GCM")
    ms.save_checkpoint(small, path("cbc.ckpt"), enc_key=CBC_KEY, enc_mode="AES-CBC")
    record("cbc.ckpt", dec_key=CBC_KEY, dec_mode="AES-CBC")
    append = {"an_int": 7, "a_negative": -3, "a_bool": True, "a_float": 0.1, "a_str": "héllo wörld ✓",
              "empty_str": "", "a_tensor": Tensor(np.array([1.0, 2.0], np.float32)),
              "a_param": Parameter(Tensor(np.array([3], np.int32)), name="a_param")}
    ms.save_checkpoint(small[:2], path("append_dict.ckpt"), append_dict=append)
    record("append_dict.ckpt")
    ms.save_checkpoint(items, path("every_dtype.safetensors"), format="safetensors")
    record("every_dtype.safetensors", format="safetensors")
    for optimizer in ("momentum", "adam", "adamweightdecay"):
        trained(optimizer)
    split_by_hand()
    damaged()
    print(f"wrote fixtures to {os.path.normpath(OUT)} with MindSpore {ms.__version__}")
    return 0


if __name__ == "__main__":
    try:
        code = main()
    except Exception:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    os._exit(code)  # MindSpore 2.10 can crash in its own atexit teardown; the files are written
