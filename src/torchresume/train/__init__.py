"""The training harness: Model, callbacks (one module each), save_on_exception."""

from torchresume.train.backup_and_restore import BackupAndRestore
from torchresume.train.callback import Callback, RunContext
from torchresume.train.checkpoint_config import CheckpointConfig
from torchresume.train.early_stopping import EarlyStopping
from torchresume.train.history import History
from torchresume.train.lambda_callback import LambdaCallback
from torchresume.train.loss_monitor import LossMonitor
from torchresume.train.model import Model
from torchresume.train.model_checkpoint import ModelCheckpoint
from torchresume.train.on_request_exit import OnRequestExit
from torchresume.train.summary_collector import SummaryCollector
from torchresume.train.time_monitor import TimeMonitor

__all__ = [
           "BackupAndRestore",
           "Callback",
           "CheckpointConfig",
           "EarlyStopping",
           "History",
           "LambdaCallback",
           "LossMonitor",
           "Model",
           "ModelCheckpoint",
           "OnRequestExit",
           "RunContext",
           "SummaryCollector",
           "TimeMonitor",
]
