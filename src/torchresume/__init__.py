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
from torchresume.manager import CheckpointManager
from torchresume.retention import KeepBest, KeepEveryNMinutes, KeepLast
from torchresume.state.stateful import Stateful
from torchresume.train import (
    BackupAndRestore,
    Callback,
    CheckpointConfig,
    EarlyStopping,
    History,
    LambdaCallback,
    LossMonitor,
    Model,
    ModelCheckpoint,
    OnRequestExit,
    RunContext,
    SummaryCollector,
    TimeMonitor,
)
from torchresume.train.exception_save import save_on_exception

__version__ = "0.1.0"

__all__ = [
    "AsyncSaveError",
    "BackupAndRestore",
    "Callback",
    "CheckpointConfig",
    "CheckpointConfigError",
    "CheckpointManager",
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
    "DecryptionError",
    "EarlyStopping",
    "History",
    "KeepBest",
    "KeepEveryNMinutes",
    "KeepLast",
    "LambdaCallback",
    "LossMonitor",
    "Model",
    "ModelCheckpoint",
    "OnRequestExit",
    "RunContext",
    "StateMismatchError",
    "Stateful",
    "StorageError",
    "SummaryCollector",
    "TimeMonitor",
    "TorchResumeError",
    "UnsafeCheckpointError",
    "UnsupportedFormatError",
    "load_checkpoint",
    "load_param_into_net",
    "save_checkpoint",
    "save_on_exception",
    "wait_async_saves",
]
