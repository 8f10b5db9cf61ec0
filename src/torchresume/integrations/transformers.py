"""The Hugging Face ``Trainer`` with torchresume checkpoints: no pickle, exact resume after SIGKILL.

``TorchResumeTrainer`` (or ``TorchResumeMixin`` in front of another Trainer subclass) writes each
checkpoint the Trainer would write as one torchresume file, ``{output_dir}/{prefix}-{epoch}_{step}.ckpt``,
through the same ``CheckpointManager`` as the rest of torchresume (naming, retention, the save slot,
the state registry, the durable commit). The file holds the model's weights at the top level,
``optimizer``, ``scheduler``, ``scaler``, ``rng`` (python, numpy, torch, CUDA), ``callbacks`` (the
callbacks that have ``state_dict``/``load_state_dict``) and, as typed JSON, ``extra.trainer_state``
(the ``TrainerState``, the state of Hugging Face's stateful callbacks included) and
``extra.training_args``. Nothing is pickled; a value that JSON cannot hold is an
``UnstorableStateError`` naming its key. Under torchrun (several processes) each checkpoint is the
sharded directory of torchresume's torchrun path, written through ``ShardedStore``:
the model and optimizer through DCP, each rank's RNG streams, the scheduler and the trainer state
as its rank state.

``train(resume_from_checkpoint=True)`` continues from the newest checkpoint that reads and verifies
(damaged or half-written ones are skipped and named; a fresh start when there is none), mid-epoch
exactly: the trainer state first (so the loop counts its epochs and batches from it), then the
weights, optimizer and scheduler into the objects the Trainer prepared, the trained batches of the
epoch skipped by index (no data loaded, no random number drawn) and every RNG restored last, just
before the first batch trained after the resume.

Hooks overridden (transformers 5.x; checked at import; tested with transformers 5.24 and
Accelerate 1.15, the range in ``TESTED``): the public ``train``, and, since no public hook writes
or loads these, the private ``_save_checkpoint`` (the write), ``_init_training_state`` (the restored
TrainerState), ``_prepare_for_training`` (state into the prepared model, optimizer and scheduler),
``_run_epoch`` (the resumed epoch, whose batches the Trainer's own ``get_resumed_dataloader`` skips)
and ``_load_rng_state`` (the RNG). Under torchrun the newest *committed* sharded checkpoint is
resumed (its parts are checked as they are read).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from torchresume.errors import (
    CheckpointConfigError,
    StateMismatchError,
    UnstorableStateError,
)
from torchresume.files import read_checkpoint
from torchresume.format.reader import Checkpoint
from torchresume.integrations import claim
from torchresume.log import log
from torchresume.manager import CheckpointManager
from torchresume.naming import check_prefix
from torchresume.save_slot import check_overlap
from torchresume.state import rng
from torchresume.world import World

try:
    import transformers
    from transformers import Trainer, TrainerState
    from transformers.trainer_callback import ExportableState
except ImportError as exc:  # pragma: no cover - the extra is not installed
    raise ImportError("torchresume.integrations.transformers needs transformers 5.x: "
                      "pip install 'torchresume[transformers]'") from exc

TESTED = ">=5.24,<6"  # the transformers versions tested (the [transformers] extra pins them)
_HOOKS = ("_save_checkpoint", "_init_training_state", "_prepare_for_training", "_run_epoch",
          "_load_rng_state", "_load_callback_state")
_MISSING = [name for name in _HOOKS if not hasattr(Trainer, name)]
if _MISSING:  # pragma: no cover - depends on the installed transformers
    raise ImportError(f"transformers {transformers.__version__}'s Trainer lacks {', '.join(_MISSING)}: "
                      f"torchresume.integrations.transformers works with transformers{TESTED}; "
                      "pip install 'torchresume[transformers]'")

_JSON_HINT = ("torchresume stores the trainer state, the training arguments and Hugging Face callback "
              "state as JSON, never as pickle: make it a str/int/float/bool/None, a list, or a dict with "
              "str keys (a list for a set, .tolist() or .item() for a tensor or array)")


def as_json(value: Any, where: str) -> Any:
    """``value`` as plain JSON data (numpy scalars become Python numbers); UnstorableStateError naming
    ``where`` and the key inside it for anything else."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic) and isinstance(value.item(), (bool, int, float)):
        return value.item()
    if isinstance(value, (list, tuple)):
        return type(value)(as_json(v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise UnstorableStateError(f"{where} has the key {key!r}, a {type(key).__name__}; {_JSON_HINT}")
            out[key] = as_json(item, f"{where}[{key!r}]")
        return out
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    raise UnstorableStateError(f"{where} is a {type(value).__name__} ({shown}), which JSON cannot hold; {_JSON_HINT}")


def position(global_step: int, steps_per_epoch: int) -> tuple[int, int]:
    """(epoch, step) of a checkpoint name: the 1-based epoch and the optimizer steps done in it."""
    if global_step <= 0 or steps_per_epoch <= 0:
        return 1, max(global_step, 0)
    epoch = -(-global_step // steps_per_epoch)
    return epoch, global_step - (epoch - 1) * steps_per_epoch


class _JsonEntry:
    """A registry entry whose state is JSON taken from the trainer when a checkpoint is written.

    Loading it is a no-op: the trainer state is applied by ``_init_training_state`` (before the
    training loop counts its epochs from it), and the arguments are the command's own."""

    def __init__(self, name: str, read: Any) -> None:
        self.name, self.read = name, read

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = as_json(self.read(), self.name)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


@dataclass
class _Resume:
    """The checkpoint a train() call continues from, read once."""

    path: str
    trainer_state: dict[str, Any]
    rng: dict[str, Any] | None  # this process's RNG streams
    ckpt: Checkpoint | None = None  # one process: the file, restored without reading it again
    shared: dict[str, Any] | None = None  # torchrun: rank 0's rank_state (scheduler, callbacks)


def _no_trainer_state(path: str) -> StateMismatchError:
    return StateMismatchError(f"{path} holds no trainer state: it was not written by TorchResumeTrainer; "
                              "resume from one of its checkpoints, or load the weights alone with "
                              "torchresume.load_checkpoint")


class TorchResumeMixin:
    """Put in front of ``transformers.Trainer`` (or a subclass of it) for torchresume checkpoints.

    ``class MyTrainer(TorchResumeMixin, SomeTrainer)`` gives ``SomeTrainer`` what ``TorchResumeTrainer``
    gives ``Trainer``. Keyword arguments: ``checkpoint_prefix`` (default ``"trainer"``): checkpoints
    are ``{output_dir}/{checkpoint_prefix}-{epoch}_{step}.ckpt``; ``async_save`` (default False):
    a save copies the state and a background thread writes it while training goes on; ``overlap``
    (default False, with ``async_save``): the weights and optimizer state are copied beside the
    next step, whose ``optimizer.step`` waits for the copy.
    """

    def __init__(self, *args: Any, checkpoint_prefix: str = "trainer", async_save: bool = False,
                 overlap: bool = False, **kwargs: Any) -> None:
        check_overlap(overlap, async_save)
        _refuse_unsupported(kwargs["args"] if "args" in kwargs else args[1] if len(args) > 1 else None)
        super().__init__(*args, **kwargs)
        self.checkpoint_prefix = check_prefix(checkpoint_prefix)
        self.async_save, self.overlap = async_save, overlap
        self.checkpoint_store: FileStore | ShardStore = (
            ShardStore(self) if World.current().distributed else FileStore(self))
        self.claimed: CheckpointManager | None = None  # holds the run lock while train() runs
        self._resume: _Resume | None = None
        self._steps_per_epoch = 0

    # -- resuming -------------------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | bool | None = None, trial: Any = None,
              ignore_keys_for_eval: list[str] | None = None, **kwargs: Any) -> Any:
        """Train; ``resume_from_checkpoint=True`` continues from the newest valid torchresume checkpoint
        in ``output_dir`` (a fresh start when there is none), a path from that checkpoint.

        ``output_dir`` is claimed first, before anything is read (``claim``: the run lock, held by
        rank 0 for the job under torchrun, ``RunLockedError`` on every rank when another run holds
        it; then a killed writer's temporaries and unfinished sharded parts are removed)."""
        self.claimed = claim(self.args.output_dir, self.checkpoint_prefix)  # type: ignore[attr-defined]
        try:
            self._resume = self._find_resume(resume_from_checkpoint)
            return super().train(resume_from_checkpoint=None, trial=trial,  # type: ignore[misc]
                                 ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)
        finally:
            self._resume = None
            try:
                self.checkpoint_store.close()
            finally:
                self.claimed.close()
                self.claimed = None

    def _find_resume(self, resume_from_checkpoint: str | bool | None) -> _Resume | None:
        if resume_from_checkpoint is None or resume_from_checkpoint is False:
            return None
        found = self.checkpoint_store.find(None if resume_from_checkpoint is True else str(resume_from_checkpoint))
        if found is None:
            log.info("no checkpoint of %r in %s: training from the start", self.checkpoint_prefix,
                     self.args.output_dir)  # type: ignore[attr-defined]
        else:
            log.info("resuming from %s (global step %s)", found.path, found.trainer_state.get("global_step"))
        return found

    def _init_training_state(self, max_steps: int, num_update_steps_per_epoch: int, num_train_epochs: int,
                             resume_from_checkpoint: str | None, trial: Any) -> tuple[int, int]:
        done = super()._init_training_state(max_steps, num_update_steps_per_epoch,  # type: ignore[misc]
                                            num_train_epochs, resume_from_checkpoint, trial)
        self._steps_per_epoch = num_update_steps_per_epoch
        if self._resume is None:
            return done
        self.state = TrainerState(**self._resume.trainer_state)
        self._load_callback_state()  # type: ignore[attr-defined]
        self.state.init_training_references(self, max_steps, num_train_epochs, trial)
        epochs = self.state.global_step // num_update_steps_per_epoch
        steps = 0 if self.args.ignore_data_skip else (  # type: ignore[attr-defined]
            self.state.global_step % num_update_steps_per_epoch * self.args.gradient_accumulation_steps)  # type: ignore[attr-defined]
        return epochs, steps

    def _prepare_for_training(self, max_steps: int, train_dataloader: Any, resume_from_checkpoint: Any) -> Any:
        prepared = super()._prepare_for_training(max_steps, train_dataloader,  # type: ignore[misc]
                                                 resume_from_checkpoint)
        self.checkpoint_store.open()
        if self._resume is not None:
            self.checkpoint_store.restore(self._resume)
        return prepared

    def _run_epoch(self, *args: Any, **kwargs: Any) -> Any:
        if self._resume is not None and kwargs.get("epoch") == kwargs.get("epochs_trained"):
            # the Trainer skips the trained batches and calls _load_rng_state when it holds a path
            kwargs["resume_from_checkpoint"] = self._resume.path
        return super()._run_epoch(*args, **kwargs)  # type: ignore[misc]

    def _load_rng_state(self, checkpoint: str | None) -> None:
        if self._resume is None or checkpoint != self._resume.path:
            return super()._load_rng_state(checkpoint)  # type: ignore[misc]
        if self._resume.rng is None:
            log.warning("%s holds no RNG state for this process: it continues with fresh random numbers",
                        checkpoint)
            return None
        rng.restore(self._resume.rng)
        return None

    # -- saving ---------------------------------------------------------------------------
    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        if getattr(self, "hp_search_backend", None) is None and trial is None:
            self.store_flos()  # type: ignore[attr-defined]
        self._export_callback_states()
        epoch, step = position(self.state.global_step, self._steps_per_epoch)
        self.checkpoint_store.save(epoch, step)

    def checkpoint_info(self) -> dict[str, Any]:
        """The facts each checkpoint's info block holds beside epoch and step."""
        return {"trainer": "transformers", "transformers": transformers.__version__,
                "epoch_fraction": as_json(self.state.epoch, "trainer_state['epoch']")}

    def _export_callback_states(self) -> None:
        """Hugging Face's stateful callbacks (and the TrainerControl) into the trainer state, as the
        Trainer's own ``_save_checkpoint`` does."""
        states: dict[str, Any] = {}
        for cb in [*self.callback_handler.callbacks, self.control]:  # type: ignore[attr-defined]
            if isinstance(cb, ExportableState):
                name = type(cb).__name__
                state = as_json(cb.state(), f"callback {name}'s state()")
                states[name] = [*_as_list(states[name]), state] if name in states else state
        stateful: Any = self.state.stateful_callbacks  # a dict once the TrainerState exists
        stateful.update(states)

    def stateful_callbacks(self) -> dict[str, Any]:
        """Callbacks with state_dict()/load_state_dict(), by class name (``Name#2`` for a second)."""
        found: dict[str, Any] = {}
        for cb in self.callback_handler.callbacks:  # type: ignore[attr-defined]
            if callable(getattr(cb, "state_dict", None)) and callable(getattr(cb, "load_state_dict", None)):
                name, n = type(cb).__name__, 2
                while name in found:
                    name, n = f"{type(cb).__name__}#{n}", n + 1
                found[name] = cb
        return found

    def trainer_state_dict(self) -> dict[str, Any]:
        """The TrainerState's fields (what ``trainer_state.json`` holds), not yet checked as JSON."""
        return {f.name: getattr(self.state, f.name) for f in dataclasses.fields(self.state)}


class FileStore:
    """One process: each checkpoint one file, through CheckpointManager."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.manager: CheckpointManager | None = None

    def find(self, path: str | None) -> _Resume | None:
        """The checkpoint ``path``, or (None) the newest of the run that reads and verifies."""
        if path is not None:
            return self._resume(path, read_checkpoint(path))
        found = self.trainer.claimed.newest_readable(run=self.trainer.checkpoint_prefix)
        return None if found is None else self._resume(found[0].path, found[1])

    @staticmethod
    def _resume(path: str, ckpt: Checkpoint) -> _Resume:
        tree = ckpt.tree if isinstance(ckpt.tree, dict) else {}
        extra: Any = tree.get("extra")
        state = extra.get("trainer_state") if isinstance(extra, dict) else None
        if not isinstance(state, dict):
            raise _no_trainer_state(path)
        return _Resume(path, state, tree.get("rng"), ckpt=ckpt)

    def open(self) -> None:
        """A manager over this train() call's model, optimizer and scheduler (the Trainer makes new ones)."""
        self.close()
        t = self.trainer
        limit = t.args.save_total_limit
        self.manager = CheckpointManager(
            t.args.output_dir, model=t.model, optimizer=t.optimizer, scheduler=t.lr_scheduler,
            scaler=getattr(getattr(t, "accelerator", None), "scaler", None), prefix=t.checkpoint_prefix,
            keep=limit if limit else None, async_save=t.async_save, overlap=t.overlap,
            stateful={"trainer_state": _JsonEntry("trainer_state", t.trainer_state_dict),
                      "training_args": _JsonEntry("training_args", t.args.to_dict)})

    def restore(self, resume: _Resume) -> None:
        assert self.manager is not None and resume.ckpt is not None
        self.manager.restore(resume.path, ckpt=resume.ckpt, restore_rng=False,
                             callbacks=self.trainer.stateful_callbacks())
        self.manager.retain_after_resume(resume.path)  # a kill between a commit and its retention

    def save(self, epoch: int, step: int) -> None:
        if self.manager is None:
            self.open()
        assert self.manager is not None
        t = self.trainer
        callbacks = {name: cb.state_dict() for name, cb in t.stateful_callbacks().items()}
        self.manager.save(epoch, step, t.state.global_step, callbacks=callbacks or None,
                          info=t.checkpoint_info())

    def close(self) -> None:
        manager, self.manager = self.manager, None
        if manager is not None:
            manager.close()


class ShardStore:
    """torchrun: each checkpoint one sharded directory through ShardedStore (DCP; the
    model and optimizer written once, each rank's RNG and the shared trainer state as rank states)."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.manager: Any = None

    def _manager(self) -> Any:
        from torchresume.distributed import ShardedStore
        t = self.trainer
        if self.manager is None:
            self.manager = ShardedStore(
                t.args.output_dir, prefix=t.checkpoint_prefix, keep=t.args.save_total_limit or 2**31,
                async_save=t.async_save, overlap=t.overlap)
        return self.manager

    def find(self, path: str | None) -> _Resume | None:
        """Collective: the newest committed sharded checkpoint of the run (rank 0 decides)."""
        if path is not None:
            raise CheckpointConfigError("under torchrun, resume_from_checkpoint takes True (the newest "
                                        f"sharded checkpoint in output_dir), not a path ({path})")
        manager = self._manager()
        newest = manager.newest()
        if newest is None:
            return None
        found = manager.rank_states(newest)
        world = self.trainer.claimed.world
        if found.world_size != world.size:
            raise CheckpointConfigError(f"{newest} was saved by {found.world_size} processes, this run has "
                                        f"{world.size}: resume the Trainer with the same number of processes")
        shared, own = found.rank_states[0] or {}, found.rank_states[world.rank] or {}
        if not isinstance(shared.get("trainer_state"), dict):
            raise _no_trainer_state(newest)
        return _Resume(newest, shared["trainer_state"], own.get("rng"), shared=shared)

    def open(self) -> None:
        self._manager()

    def _state(self) -> dict[str, Any]:
        from torchresume.state.sharded import model_state
        t = self.trainer
        return model_state(t.model, getattr(t.optimizer, "optimizer", t.optimizer))

    def restore(self, resume: _Resume) -> None:
        from torch.distributed.checkpoint.state_dict import set_state_dict
        t, state = self.trainer, self._state()
        self._manager().restore(state, path=resume.path)  # the one find() read the trainer state from
        optimizer = getattr(t.optimizer, "optimizer", t.optimizer)
        set_state_dict(t.model, (optimizer,), model_state_dict=state["model"],
                       optim_state_dict=state.get("optim", {}))
        shared = resume.shared or {}
        if t.lr_scheduler is not None and shared.get("scheduler") is not None:
            t.lr_scheduler.load_state_dict(shared["scheduler"])
        callbacks = t.stateful_callbacks()
        for name, cb_state in (shared.get("callbacks") or {}).items():
            if name in callbacks:
                callbacks[name].load_state_dict(cb_state)

    def save(self, epoch: int, step: int) -> None:
        t = self.trainer
        own = {"rng": rng.capture(),
               "scheduler": t.lr_scheduler.state_dict() if t.lr_scheduler is not None else None,
               "trainer_state": as_json(t.trainer_state_dict(), "trainer_state"),
               "training_args": as_json(t.args.to_dict(), "training_args"),
               "callbacks": {name: cb.state_dict() for name, cb in t.stateful_callbacks().items()}}
        info = {**t.checkpoint_info(), "global_step": t.state.global_step,
                "world_size": World.current().size}
        if t.claimed is not None:  # object storage: rank 0 renews the lock's heartbeat (a failure is said)
            t.claimed.hold_lock()
        manager = self._manager()
        manager.guard_optimizer(t.optimizer)  # overlap: the step waits for the copy (once per optimizer)
        manager.save(self._state(), epoch, step, rank_state=own, info=info)

    def close(self) -> None:
        manager, self.manager = self.manager, None
        if manager is not None:
            manager.close()


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _refuse_unsupported(args: Any) -> None:
    """Typed errors, before the Trainer is made, for what these checkpoints do not do (yet)."""
    if args is None:
        return  # the Trainer's default TrainingArguments: nothing to refuse
    if getattr(args, "deepspeed", None) or getattr(args, "fsdp", None):
        raise CheckpointConfigError("TorchResumeTrainer does not write DeepSpeed or FSDP checkpoints; "
                                    "remove deepspeed=/fsdp= from the TrainingArguments")
    for name, why in (("load_best_model_at_end", "best-model checkpoints are not tracked yet"),
                      ("save_only_model", "torchresume checkpoints always hold the whole training state "
                                          "(torchresume convert --to safetensors gives the weights alone)"),
                      ("push_to_hub", "checkpoints are torchresume files, not Hub folders (torchresume "
                                      "convert --to safetensors gives a model.safetensors to upload)")):
        if getattr(args, name, False):
            raise CheckpointConfigError(f"TrainingArguments({name}=True) is not supported by "
                                        f"TorchResumeTrainer: {why}; set {name}=False")


class TorchResumeTrainer(TorchResumeMixin, Trainer):
    """``transformers.Trainer`` whose checkpoints are torchresume files: no pickle, exact resume.

    Takes every argument ``Trainer`` takes, plus ``checkpoint_prefix`` (default ``"trainer"``) and
    ``async_save`` and ``overlap`` (default False). Checkpoints are written when the Trainer would write its own
    (``save_strategy``, ``save_steps``), into ``output_dir`` as ``{prefix}-{epoch}_{step}.ckpt``,
    ``save_total_limit`` of them kept. ``train(resume_from_checkpoint=True)`` continues from the
    newest one that verifies, bitwise as if never stopped; a first run starts fresh, so the same
    command starts and restarts a run. Under torchrun the checkpoints are sharded directories (the
    torchrun path's), resumed at the same number of processes.

    Example:
        ```python
        from transformers import BertConfig, BertForSequenceClassification, TrainingArguments
        from torchresume.integrations.transformers import TorchResumeTrainer

        config = BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=32, max_position_embeddings=16)
        bert = BertForSequenceClassification(config)
        data = [{"input_ids": torch.tensor([i % 32] * 8), "labels": torch.tensor(i % 2)} for i in range(16)]
        args = TrainingArguments("runs/bert", max_steps=4, per_device_train_batch_size=4, save_steps=2,
                                 report_to=[], use_cpu=True, disable_tqdm=True)
        trainer = TorchResumeTrainer(model=bert, args=args, train_dataset=data)
        trainer.train(resume_from_checkpoint=True)   # fresh here; after a kill, from the newest checkpoint
        ```
    """


__all__ = ["TorchResumeMixin", "TorchResumeTrainer"]
