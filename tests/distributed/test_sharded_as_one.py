"""A checkpoint written under torchrun is a checkpoint like any other (issue 19, part 6).

The same training (`torchresume train --model mlp --deterministic`, 6 steps, a save every 3) runs
once in one process and once under a real `torchrun --nproc-per-node 2` (gloo, CPU). Read through
`torchresume.load_checkpoint`, both give the same weight and optimizer names; the sharded one holds
in addition the other rank's own state under the documented `rank_states.1.*` names. Then each of
`eval`, `infer`, `convert` (native and `--to mindspore`) and `train --resume` in ONE process runs
on both, as the installed `torchresume` command, with the same results.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import torchresume as tr
from tests.distributed.launch import env, run, torchrun_cmd, train_cli
from tests.format.mindspore_helpers import needs_mindspore, run_mindspore
from torchresume.app.models import Network
from torchresume.state.train_state import is_training_part

CLI = str(Path(sys.executable).with_name("torchresume"))
TRAIN = ("--epochs", "1", "--steps-per-epoch", "6", "--save-steps", "3")
NAME = "mlp-1_6.ckpt"
# Rank 1's own state (rank 0's stands where one process keeps it: rng, sampler, callbacks):
RANK_1 = sorted([
    "rank_states.1.callbacks.ModelCheckpoint.best", "rank_states.1.callbacks.ModelCheckpoint.last_saved_step",
    "rank_states.1.rng.numpy.bit_generator", "rank_states.1.rng.numpy.gauss", "rank_states.1.rng.numpy.has_gauss",
    "rank_states.1.rng.numpy.state.key", "rank_states.1.rng.numpy.state.pos", "rank_states.1.rng.python.0",
    "rank_states.1.rng.python.1", "rank_states.1.rng.python.2", "rank_states.1.rng.torch",
    "rank_states.1.sampler.consumed", "rank_states.1.sampler.epoch", "rank_states.1.sampler.global_batch_size",
    "rank_states.1.sampler.length", "rank_states.1.sampler.seed"])


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([CLI, *args], cwd=cwd, env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"torchresume {' '.join(args)}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
    return done


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The newest checkpoint of each run: "one" (one process) and "torchrun" (2 ranks, sharded)."""
    root = tmp_path_factory.mktemp("as-one")
    sharded = run(torchrun_cmd(2, train_cli(root / "dist", *TRAIN)), root)
    assert sharded.returncode == 0, sharded.stdout[-3000:] + sharded.stderr[-3000:]
    cli(root, *train_cli(root / "one", *TRAIN)[2:])  # the same arguments, without `-m torchresume`
    paths = {"one": root / "one" / NAME, "torchrun": root / "dist" / NAME}
    assert paths["torchrun"].is_dir() and paths["one"].is_file()
    return paths


def _close(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.dtype == b.dtype and torch.allclose(a, b, rtol=1e-5, atol=1e-6)  # DDP sums in another order
    if hasattr(a, "shape"):  # numpy RNG keys
        return bool((a == b).all())  # type: ignore[union-attr]
    return a == b


def test_load_checkpoint_gives_the_names_of_one_process(ckpts: dict[str, Path]) -> None:
    one, sharded = tr.load_checkpoint(str(ckpts["one"])), tr.load_checkpoint(str(ckpts["torchrun"]))
    weights_and_optimizer = sorted(k for k in one if not is_training_part(k) or k.startswith("optimizer."))
    assert weights_and_optimizer == sorted(k for k in sharded if not is_training_part(k) or k.startswith("optimizer."))
    assert "dense_relu_sequential.0.weight" in weights_and_optimizer
    assert "optimizer.state.5.momentum_buffer" in weights_and_optimizer
    assert sorted(set(sharded) - set(one)) == RANK_1 and set(one) - set(sharded) == set()
    differ = [k for k in one if not _close(one[k], sharded[k])]
    assert differ == []  # weights, optimizer, rank 0's RNG streams and data position: the same values


def test_load_param_into_net_loads_every_weight(ckpts: dict[str, Path]) -> None:
    net = Network()
    opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.5)
    params = tr.load_checkpoint(str(ckpts["torchrun"]))
    assert tr.load_param_into_net(net, params) == ([], [])
    assert tr.load_param_into_net(opt, params) == ([], [])
    assert torch.equal(net.state_dict()["dense_relu_sequential.4.bias"], params["dense_relu_sequential.4.bias"])


def test_eval_and_infer_work_on_both(ckpts: dict[str, Path], tmp_path: Path) -> None:
    scores = {k: json.loads(cli(tmp_path, "eval", "--model", "mlp", "--ckpt", str(p)).stdout) for k, p in ckpts.items()}
    assert scores["one"]["acc"] == scores["torchrun"]["acc"]
    assert scores["one"]["loss"] == pytest.approx(scores["torchrun"]["loss"], abs=1e-6)
    right = {k: cli(tmp_path, "infer", "--model", "mlp", "--ckpt", str(p), "--out", f"{k}.png").stdout.split(": ")[1]
             for k, p in ckpts.items()}
    assert right["one"] == right["torchrun"] and right["one"].endswith("/8 right\n")


def test_convert_native_gives_a_training_file(ckpts: dict[str, Path], tmp_path: Path) -> None:
    converted = tmp_path / "whole.ckpt"
    done = cli(tmp_path, "convert", str(ckpts["torchrun"]), str(converted))
    assert done.stdout.strip() == f"wrote {converted} (train_state, consolidated from 2 ranks' shards)"
    same = cli(tmp_path, "diff", str(ckpts["torchrun"]), str(converted))
    assert same.stdout.strip() == "identical: same tensors, values and metadata"
    one = tr.load_checkpoint(str(ckpts["one"]))
    assert sorted(tr.load_checkpoint(str(converted))) == sorted([*one, *RANK_1])
    scores = [json.loads(cli(tmp_path, "eval", "--model", "mlp", "--ckpt", str(p)).stdout)["acc"]
              for p in (converted, ckpts["torchrun"])]
    assert scores[0] == scores[1]


def test_convert_to_mindspore_writes_the_same_entries(ckpts: dict[str, Path], tmp_path: Path) -> None:
    entries = {}
    for kind, path in ckpts.items():
        out = tmp_path / f"{kind}.ms.ckpt"
        cli(tmp_path, "convert", str(path), str(out), "--to", "mindspore")
        entries[kind] = tr.load_checkpoint(str(out))
        assert json.loads(cli(tmp_path, "eval", "--model", "mlp", "--ckpt", str(out)).stdout)["acc"] > 0
    assert sorted(entries["one"]) == sorted(entries["torchrun"])
    assert "moments.dense_relu_sequential.0.weight" in entries["torchrun"]
    assert not [k for k in entries["torchrun"] if k.startswith(("model.", "optim.", "rank_states", "__rank_state"))]
    assert all(isinstance(v, torch.Tensor) and v.dtype != torch.uint8 for v in entries["torchrun"].values())


@needs_mindspore
def test_mindspore_loads_the_converted_sharded_checkpoint(ckpts: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "torchrun.ms.ckpt"
    cli(tmp_path, "convert", str(ckpts["torchrun"]), str(out), "--to", "mindspore")
    (report,) = run_mindspore([{"ckpt": str(out), "net": "mlp", "optimizer": "momentum", "dec_key_hex": None,
                                "dec_mode": "AES-GCM", "npz": str(tmp_path / "ms.npz")}], tmp_path)
    assert report["ok"], report.get("error")
    assert report["net_not_loaded"] == [] and report["opt_not_loaded"] == []


RESUMED = re.compile(r"resumed from (\S+) at epoch 1, step 6 \(global step 6\)")


def test_train_resume_in_one_process_continues_both(ckpts: dict[str, Path], tmp_path: Path) -> None:
    finals = {}
    for kind, path in ckpts.items():
        args = train_cli(tmp_path / kind, "--epochs", "2", "--steps-per-epoch", "6", "--save-steps", "3",
                         "--resume", str(path))[2:]
        done = cli(tmp_path, *args)
        assert RESUMED.search(done.stderr + done.stdout), done.stderr[-2000:]
        assert "done: 12 steps" in done.stdout
        finals[kind] = tr.load_checkpoint(str(tmp_path / kind / "mlp-2_6.ckpt"))
    assert sorted(finals["one"]) == sorted(finals["torchrun"])  # now a one-process file: no rank_states
    weights = [k for k in finals["one"] if not is_training_part(k)]
    assert len(weights) == 6 and all(_close(finals["one"][k], finals["torchrun"][k]) for k in weights)


def test_train_resume_at_two_ranks_continues_both(ckpts: dict[str, Path], tmp_path: Path) -> None:
    """`torchrun --nproc-per-node 2 -m torchresume train --resume <checkpoint>` continues the one-process
    file and the sharded checkpoint alike (each rank reads the file; the sharded one is resharded)."""
    finals = {}
    for kind, path in ckpts.items():
        args = train_cli(tmp_path / kind, "--epochs", "2", "--steps-per-epoch", "6", "--save-steps", "3",
                         "--resume", str(path))
        done = run(torchrun_cmd(2, args), tmp_path)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert f"resumed from {path}" in done.stdout + done.stderr
        finals[kind] = tr.load_checkpoint(str(tmp_path / kind / "mlp-2_6.ckpt"))
    weights = [k for k in finals["one"] if not is_training_part(k)]
    assert len(weights) == 6 and all(_close(finals["one"][k], finals["torchrun"][k]) for k in weights)
