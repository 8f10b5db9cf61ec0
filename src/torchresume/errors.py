"""The error types torchresume raises.

Each subclasses the builtin a caller would already catch, so
``except FileNotFoundError`` keeps working, and each message names the file,
the fault and how to fix it.
"""

from __future__ import annotations


class TorchResumeError(Exception):
    """Base of every error torchresume raises on purpose.

    Example:
        ```python
        try:
            tr.load_checkpoint("no-such.ckpt")
        except FileNotFoundError as exc:            # a CheckpointNotFoundError is one
            assert isinstance(exc, tr.TorchResumeError)
        ```
    """


class CheckpointNotFoundError(TorchResumeError, FileNotFoundError):
    """The checkpoint file or directory does not exist."""


class CorruptCheckpointError(TorchResumeError, ValueError):
    """The file exists but is damaged: truncated, bit-flipped or malformed."""


class UnsupportedFormatError(TorchResumeError, ValueError):
    """The file is not a checkpoint format torchresume can read."""


class UnsafeCheckpointError(CorruptCheckpointError):
    """The file asks to run code (a pickle payload) and was refused."""


class DecryptionError(TorchResumeError, ValueError):
    """The file is encrypted and the key is missing, wrong, or the file was tampered with."""


class StateMismatchError(TorchResumeError, RuntimeError):
    """Strict loading found parameters that do not match the network."""


class CheckpointConfigError(TorchResumeError, ValueError):
    """A CheckpointConfig / ModelCheckpoint argument is out of range."""


class UnsupportedUnderTorchrunError(CheckpointConfigError):
    """A CheckpointConfig option the torchrun (sharded) path cannot honour yet; raised before training starts."""


class UnsupportedStrategyError(CheckpointConfigError):
    """A Lightning strategy or option torchresume's plugin cannot honour yet (FSDP, DeepSpeed; under DDP
    ``write_mb_per_s``, a save through the IO alone, several optimizers, a mid-epoch resume at another
    world size); raised before anything is written."""


class UnstorableStateError(TorchResumeError, TypeError):
    """The state to save holds a value a checkpoint cannot store without pickle; the message names its
    key, and ``key`` holds its dotted path."""

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key


class StorageError(TorchResumeError, OSError):
    """Object storage failed permanently (after retries)."""


class CheckpointWriteError(TorchResumeError, OSError):
    """Writing a checkpoint failed (no space, I/O error, permissions); nothing was committed.

    ``errno`` is the operating system's error number where there was one.
    """


class SaveDeadlineError(CheckpointWriteError):
    """A rank did not write its part of a sharded save within ``save_deadline_s``; every rank aborted
    that save (the slow one abandoned its write) and nothing was committed."""


class RunLockedError(TorchResumeError, RuntimeError):
    """Another live process is training into the same directory or URL."""


class DataError(TorchResumeError, ValueError):
    """The data set is missing or malformed."""


class AmbiguousRunError(TorchResumeError, ValueError):
    """Auto-resume cannot tell which run in a directory to continue."""


class DivergedRunError(TorchResumeError, ValueError):
    """Every checkpoint a resume could continue from holds non-finite weights."""


class DamagedRunError(TorchResumeError, ValueError):
    """Every checkpoint a resume could continue from is damaged (none reads and verifies)."""


class DeviceError(TorchResumeError, ValueError):
    """The device asked for does not exist or is not available here."""


class AsyncSaveError(TorchResumeError, RuntimeError):
    """A background save failed; raised on the next save or at close."""


class UnsafePathError(CorruptCheckpointError):
    """A name in a checkpoint, a run directory or a copy leads outside it (an absolute path, ``..``, a
    symbolic link) or to something that is not a regular file (a FIFO, a device); refused before
    anything there was read, written or deleted. The message names it."""
