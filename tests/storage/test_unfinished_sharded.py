"""Sharded saves a kill interrupted leave parts without a manifest: the trainer's rank 0 removes
them (``ShardedStore.remove_unfinished``) once it holds the run lock, on every
storage backend. Committed checkpoints, other runs' directories and a damaged manifest stay."""

from __future__ import annotations

import torch

from torchresume.distributed import ShardedStore
from torchresume.storage import resolve


def _names(root: str) -> list[str]:
    storage, where = resolve(root)
    return sorted(e.path.rstrip("/").rsplit("/", 1)[-1] for e in storage.list(where))


def _interrupted(mgr: ShardedStore, step: int) -> str:
    """A save whose manifest (the commit, written last) never came: what a SIGKILL mid-save leaves."""
    path = mgr.save({"model": {"w": torch.ones(4) * step}}, epoch=1, step=step)
    assert path is not None
    storage, where = resolve(path)
    storage.delete(storage.join(where, "manifest.json"))
    return path


def test_interrupted_saves_of_the_prefix_are_removed_and_nothing_else(root: str) -> None:
    run = ShardedStore(root, prefix="run", keep=5)
    other = ShardedStore(root, prefix="other", keep=5)
    run.save({"model": {"w": torch.ones(4)}}, epoch=1, step=1)
    _interrupted(run, 2)
    _interrupted(run, 3)
    _interrupted(other, 1)  # another prefix: not this run's to remove
    damaged = run.save({"model": {"w": torch.zeros(4)}}, epoch=1, step=4)
    assert damaged is not None
    storage, where = resolve(damaged)
    storage.delete(storage.join(where, "manifest.json"))
    storage.write_atomic(storage.join(where, "manifest.json"), [b"{not json"], read_only=False)
    assert _names(root) == ["other-1_1.ckpt", "run-1_1.ckpt", "run-1_2.ckpt", "run-1_3.ckpt", "run-1_4.ckpt"]

    removed = run.remove_unfinished()

    assert sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in removed) == ["run-1_2.ckpt", "run-1_3.ckpt"]
    assert _names(root) == ["other-1_1.ckpt", "run-1_1.ckpt", "run-1_4.ckpt"]  # a damaged manifest is kept
    state = {"model": {"w": torch.zeros(4)}}
    assert run.restore(state) is not None and torch.equal(state["model"]["w"], torch.ones(4))
    assert run.remove_unfinished() == []
