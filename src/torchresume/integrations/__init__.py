"""Adapters between torchresume's core and other training frameworks (``lightning``, ``transformers``):
thin adapters over the same core (naming, retention, the save slot, the file layer). The core never
imports this package; each integration is imported by its own name and needs its library installed.
"""

from __future__ import annotations

from torchresume.manager import CheckpointManager


def claim(directory: str, prefix: str) -> CheckpointManager:
    """A trainer's job takes ``directory`` before it reads, resumes or deletes anything there: the
    manager's run lock (collective under torchrun: rank 0 holds it, every rank raises the same
    RunLockedError; then a killed writer's temporary files and ``prefix``'s unfinished directory or
    sharded saves go). ``close()`` the manager at the job's end to let go."""
    manager = CheckpointManager(directory, prefix=prefix, keep=None)
    manager.acquire_lock()
    return manager
