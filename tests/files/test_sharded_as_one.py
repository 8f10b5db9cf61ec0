"""A sharded checkpoint read through the file layer is laid out as a single-process file.

The checkpoints here are real ones: ShardedStore without a process group writes a
sharded checkpoint of one rank through DCP, exactly as each rank does under torchrun (the 2-rank
runs of the CLI are tests/distributed/test_sharded_as_one.py). Fast: no torchrun, no subprocess.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict

import torchresume as tr
from torchresume.distributed import ShardedStore
from torchresume.errors import DecryptionError, StateMismatchError
from torchresume.files import read_checkpoint
from torchresume.state import rng
from torchresume.state.tree import flat_view

KEY = bytes(range(16))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        self.bn = nn.BatchNorm1d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.body(x))


def trained() -> tuple[Net, torch.optim.Optimizer]:
    """Adam over two param groups (so positions run across groups), two steps taken."""
    torch.manual_seed(0)
    net = Net()
    opt = torch.optim.Adam([{"params": net.body.parameters()}, {"params": net.bn.parameters(), "lr": 0.01}],
                           lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        net(torch.randn(6, 4)).pow(2).mean().backward()
        opt.step()
    return net, opt


def save_sharded(directory: Path, net: Net, opt: torch.optim.Optimizer, *, rank_state: Any = None,
                 extra: dict[str, Any] | None = None, enc_key: bytes | None = None) -> str:
    """What DistributedModelCheckpoint saves: model and optimizer keyed by name (DCP's state_dict API)."""
    model_sd, optim_sd = get_state_dict(net, opt)
    mgr = ShardedStore(str(directory), prefix="one", enc_key=enc_key)
    return mgr.save({"model": model_sd, "optim": optim_sd, **(extra or {})}, epoch=1, step=2,
                    rank_state=rank_state, info={"global_step": 2, "steps_per_epoch": 4})


def single_process_tree(net: Net, opt: torch.optim.Optimizer) -> dict[str, Any]:
    return {**net.state_dict(), "optimizer": opt.state_dict()}


def assert_same_tree(got: Any, want: Any) -> None:
    got_flat, want_flat = flat_view(got), flat_view(want)
    assert sorted(got_flat) == sorted(want_flat)
    for name, value in want_flat.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(got_flat[name], value), name
        else:
            assert got_flat[name] == value, name


def test_weights_at_top_and_optimizer_by_position(tmp_path: Path) -> None:
    net, opt = trained()
    path = save_sharded(tmp_path, net, opt)
    ckpt = read_checkpoint(path)
    assert (ckpt.kind, ckpt.format, ckpt.encrypted) == ("train_state", "torchresume-sharded", False)
    assert_same_tree(ckpt.tree, single_process_tree(net, opt))  # the same names and values
    assert ckpt.info["global_step"] == 2 and ckpt.info["world_size"] == 1
    assert not {"layout", "rank_parts", "dcp_metadata"} & set(ckpt.info)  # the directory's bookkeeping


def test_load_param_into_net_loads_every_weight_and_the_optimizer(tmp_path: Path) -> None:
    net, opt = trained()
    path = save_sharded(tmp_path, net, opt)
    params = tr.load_checkpoint(path)
    torch.manual_seed(1)
    fresh = Net()
    fresh_opt = torch.optim.Adam([{"params": fresh.body.parameters()}, {"params": fresh.bn.parameters()}], lr=0.1)
    assert tr.load_param_into_net(fresh, params) == ([], [])  # every weight, nothing left over
    assert tr.load_param_into_net(fresh_opt, params) == ([], [])
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in net.state_dict().items())
    for a, b in zip(fresh_opt.state_dict()["state"].values(), opt.state_dict()["state"].values(), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in b)


def test_rank_zero_run_state_at_top_the_rest_per_rank(tmp_path: Path) -> None:
    net, opt = trained()
    sampler = {"seed": 0, "epoch": 0, "consumed": 2, "length": 64, "global_batch_size": 16}
    own = {"rng": rng.capture(), "sampler": sampler, "callbacks": {"ModelCheckpoint": {"best": None}},
           "scheduler": None, "seen": 32}
    path = save_sharded(tmp_path, net, opt, rank_state=own, extra={"ema": {"decay": 0.9}})
    tree = read_checkpoint(path).tree
    assert tree["sampler"] == {"seed": 0, "epoch": 0, "consumed": 2, "length": 64, "batch_size": 16}
    assert torch.equal(tree["rng"]["torch"], own["rng"]["torch"])
    assert tree["callbacks"] == own["callbacks"]
    assert "scheduler" not in tree  # none saved: one process's file has none either
    assert tree["rank_states"] == {0: {"seen": 32}}  # what rank 0 kept beside the run state
    assert tree["extra"] == {"ema": {"decay": 0.9}}  # another saved entry, as a registered state sits


def test_encrypted_reads_with_the_key_and_is_a_typed_error_without(tmp_path: Path) -> None:
    net, opt = trained()
    path = save_sharded(tmp_path, net, opt, enc_key=KEY)
    ckpt = read_checkpoint(path, dec_key=KEY)
    assert ckpt.encrypted
    assert_same_tree(ckpt.tree, single_process_tree(net, opt))
    with pytest.raises(DecryptionError, match=r"the checkpoint is encrypted \(AES-GCM\); pass dec_key="):
        tr.load_checkpoint(path)
    with pytest.raises(DecryptionError, match="decryption failed: the key is wrong"):
        tr.load_checkpoint(path, dec_key=bytes(16))


def test_a_model_name_that_is_reserved_is_a_typed_error(tmp_path: Path) -> None:
    net = nn.ModuleDict({"rng": nn.Linear(2, 2)})
    path = ShardedStore(str(tmp_path), prefix="one").save({"model": net.state_dict()}, 1, 1)
    with pytest.raises(StateMismatchError, match="start with a reserved word .* restore it with "
                                                 r"CheckpointManager\(..., layout='sharded'\), which reads "
                                                 "the shards in place, or rename the submodule"):
        read_checkpoint(path)
