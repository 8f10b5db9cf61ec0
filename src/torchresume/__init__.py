"""torchresume: PyTorch training that survives interruptions.

The facade: the public names and nothing else. The checkpoint core (save,
load, the manager, retention, errors) is imported at once; the training
harness (Model and its callbacks) only when one of its names is first used,
so ``import torchresume`` stays light for code that only reads checkpoints.
"""

from typing import Any

from torchresume import openmp  # noqa: F401  (first: the command line's OpenMP setting, before torch loads)
from torchresume.api import load_checkpoint, load_param_into_net, save_checkpoint, wait_async_saves
from torchresume.errors import (
    AsyncSaveError,
    CheckpointConfigError,
    CheckpointNotFoundError,
    CheckpointWriteError,
    CorruptCheckpointError,
    DecryptionError,
    RunLockedError,
    StateMismatchError,
    StorageError,
    TorchResumeError,
    UnsafeCheckpointError,
    UnstorableStateError,
    UnsupportedFormatError,
)
from torchresume.manager import CheckpointManager
from torchresume.retention import KeepBest, KeepEveryNMinutes, KeepLast
from torchresume.state.stateful import Stateful

__version__ = "0.3.0.dev0"

_HARNESS = {
    "BackupAndRestore": "torchresume.train",
    "Callback": "torchresume.train",
    "CheckpointConfig": "torchresume.train",
    "EarlyStopping": "torchresume.train",
    "History": "torchresume.train",
    "LambdaCallback": "torchresume.train",
    "LossMonitor": "torchresume.train",
    "Model": "torchresume.train",
    "ModelCheckpoint": "torchresume.train",
    "OnRequestExit": "torchresume.train",
    "RunContext": "torchresume.train",
    "SummaryCollector": "torchresume.train",
    "TimeMonitor": "torchresume.train",
    "save_on_exception": "torchresume.train.exception_save",
}


def __getattr__(name: str) -> Any:
    import importlib
    module = _HARNESS.get(name)
    if module is None:  # submodules are imported by name (``from torchresume import inspection``)
        raise AttributeError(f"module 'torchresume' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "AsyncSaveError",
    "BackupAndRestore",
    "Callback",
    "CheckpointConfig",
    "CheckpointConfigError",
    "CheckpointManager",
    "CheckpointNotFoundError",
    "CheckpointWriteError",
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
    "RunLockedError",
    "StateMismatchError",
    "Stateful",
    "StorageError",
    "SummaryCollector",
    "TimeMonitor",
    "TorchResumeError",
    "UnsafeCheckpointError",
    "UnstorableStateError",
    "UnsupportedFormatError",
    "load_checkpoint",
    "load_param_into_net",
    "save_checkpoint",
    "save_on_exception",
    "wait_async_saves",
]
