"""Load checkpoints into REAL MindSpore networks and optimizers and report what happened.

Run with the MindSpore interpreter; the round-trip tests and the seed story use it:

    $MS_PYTHON scripts/mindspore_load_check.py jobs.json report.json

``jobs.json`` is a list of {"ckpt", "net": "bnnet" | "lenet5" | "mlp", "optimizer": "momentum" |
"adam" | null, "dec_key_hex": null | hex, "dec_mode": "AES-GCM" | "AES-CBC", "npz": path}.
For each job it builds the network (and the optimizer over
``net.trainable_params()``), runs ``load_checkpoint`` and ``load_param_into_net``
into both, and writes every network and optimizer parameter's raw bytes to the
job's npz. The report holds, per job, MindSpore's not-loaded lists and dtypes,
or the error MindSpore raised.
"""

from __future__ import annotations

import json
import os
import sys

import mindspore as ms
import numpy as np
from mindspore import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_mindspore_fixtures import BNNet


class LeNet5(nn.Cell):
    """Seed 003's LeNet5, verbatim."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, stride=1, pad_mode="valid")
        self.conv2 = nn.Conv2d(6, 16, 5, stride=1, pad_mode="valid")
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Dense(400, 120)
        self.fc2 = nn.Dense(120, 84)
        self.fc3 = nn.Dense(84, 10)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        x = self.flatten(x)
        return self.fc3(self.fc2(self.fc1(x)))


class MLP(nn.Cell):
    """torchresume's app MLP (``--model mlp``, seed 000's Network), under the same parameter names."""

    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.dense_relu_sequential = nn.SequentialCell(
            nn.Dense(784, 512), nn.ReLU(), nn.Dense(512, 512), nn.ReLU(), nn.Dense(512, 10))

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        return self.dense_relu_sequential(self.flatten(x))


def run(job: dict) -> dict:
    net = {"bnnet": BNNet, "lenet5": LeNet5, "mlp": MLP}[job["net"]]()
    opt = None
    if job.get("optimizer") == "momentum":
        opt = nn.Momentum(net.trainable_params(), 0.5, 0.5)  # values the file must overwrite
    elif job.get("optimizer") == "adam":
        opt = nn.Adam(net.trainable_params(), 0.5)
    kwargs = {}
    if job.get("dec_key_hex"):
        kwargs = {"dec_key": bytes.fromhex(job["dec_key_hex"]), "dec_mode": job["dec_mode"]}
    params = ms.load_checkpoint(job["ckpt"], **kwargs)
    net_missing, net_unused = ms.load_param_into_net(net, params)
    report = {"net_not_loaded": list(net_missing), "ckpt_not_loaded_by_net": list(net_unused),
              "dtypes": {k: str(v.dtype) for k, v in params.items() if not isinstance(v, str)}}
    arrays = {}
    for p in net.get_parameters():
        arrays[p.name] = np.frombuffer(p.asnumpy().tobytes(), np.uint8)
    if opt is not None:
        opt_missing, _ = ms.load_param_into_net(opt, params)
        report["opt_not_loaded"] = list(opt_missing)
        for p in opt.get_parameters():
            arrays[p.name] = np.frombuffer(p.asnumpy().tobytes(), np.uint8)
    np.savez(job["npz"], **{k.replace("/", "|"): v for k, v in arrays.items()})
    return report


def main() -> int:
    ms.set_context(mode=ms.PYNATIVE_MODE, device_target="CPU")
    jobs = json.load(open(sys.argv[1]))
    reports = []
    for job in jobs:
        try:
            reports.append({"ok": True, **run(job)})
        except Exception as exc:
            reports.append({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
    with open(sys.argv[2], "w") as f:
        json.dump(reports, f, indent=1)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # MindSpore 2.10 can crash in its own atexit teardown
