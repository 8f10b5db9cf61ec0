"""Checkpoints for torch.distributed jobs: sharded parts, one global commit, resharding via DCP.

Not imported by ``import torchresume`` (it loads torch.distributed.checkpoint);
import it as ``torchresume.distributed``.
"""

from torchresume.distributed.ending import end_process
from torchresume.distributed.manager import DistributedCheckpointManager, RestoreInfo, ShardedStore

__all__ = ["DistributedCheckpointManager", "RestoreInfo", "ShardedStore", "end_process"]
