"""Adapters between torchresume's core and other training frameworks (``lightning``, ``transformers``):
thin adapters over the same core (naming, retention, the save slot, the file layer). The core never
imports this package; each integration is imported by its own name and needs its library installed.
"""

from __future__ import annotations

from torchresume.manager import CheckpointManager


def claim(directory: str, prefix: str) -> CheckpointManager:
    """A trainer's job takes ``directory`` before it reads, resumes or deletes anything there: the
    manager's run lock (collective under torchrun: rank 0 holds it, every rank raises the same
    RunLockedError; then a killed writer's temporary files go), and rank 0 removes ``prefix``'s
    unfinished sharded parts. ``close()`` the manager at the job's end to let go."""
    from torchresume.distributed import ShardedStore
    manager = CheckpointManager(directory, prefix=prefix, keep=None)
    manager.acquire_lock()
    try:
        manager.world.on_rank_0(lambda: ShardedStore(directory, prefix=prefix).remove_unfinished())
    except BaseException:
        manager.close()
        raise
    return manager
