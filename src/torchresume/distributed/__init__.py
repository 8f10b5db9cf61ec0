"""The torch.distributed runtime of sharded checkpoints: sharded parts, one global commit, resharding via DCP.

Reading a sharded checkpoint (as one, or a rank's share) is the file layer's
(``files/sharded_reader.py``, ``files/consolidate.py``); this package holds what
needs the process group. Not imported by ``import torchresume`` (it loads
torch.distributed.checkpoint); import it as ``torchresume.distributed``.
"""

from torchresume.distributed.ending import end_process
from torchresume.distributed.manager import DistributedCheckpointManager, RestoreInfo, ShardedStore

__all__ = ["DistributedCheckpointManager", "RestoreInfo", "ShardedStore", "end_process"]
