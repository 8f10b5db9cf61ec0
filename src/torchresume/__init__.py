"""torchresume: PyTorch training that survives interruptions.

The facade: the public names and nothing else.
"""

from torchresume.api import load_checkpoint, load_param_into_net, save_checkpoint, wait_async_saves
from torchresume.errors import (
    AsyncSaveError,
    CheckpointConfigError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    DecryptionError,
    StateMismatchError,
    StorageError,
    TorchResumeError,
    UnsafeCheckpointError,
    UnsupportedFormatError,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncSaveError",
    "CheckpointConfigError",
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
    "DecryptionError",
    "StateMismatchError",
    "StorageError",
    "TorchResumeError",
    "UnsafeCheckpointError",
    "UnsupportedFormatError",
    "load_checkpoint",
    "load_param_into_net",
    "save_checkpoint",
    "wait_async_saves",
]
