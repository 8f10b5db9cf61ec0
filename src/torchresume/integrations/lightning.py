"""Lightning: torchresume checkpoints (durable commit, checksums, no pickle) and exact mid-epoch resume.

Three pieces, each a thin adapter over torchresume's core:

- ``TorchResumeIO``: a Lightning ``CheckpointIO``. ``save_checkpoint`` stores Lightning's
  checkpoint dict as one torchresume file (``kind: "lightning"``): tensors as tensors, every
  other value (hyperparameters, loop and callback state, ``on_save_checkpoint`` additions) as
  typed JSON in the skeleton, through the save slot (one save in flight, optional background
  writes) and the file layer (temporary file, fsync, rename; a commit marker on object storage).
  A value that cannot be stored is an ``UnstorableStateError`` naming its key.
- ``TorchResumeCheckpoint``: a Lightning ``ModelCheckpoint`` whose files carry torchresume
  names (``{prefix}-{epoch}_{step}.ckpt``), whose retention is torchresume's (``keep=``), whose
  ``ckpt_path="last"`` is the newest checkpoint that reads and verifies, and which saves and
  restores every RNG and makes the training DataLoader resumable.
- ``resumable(loader)``: a plain ``torch.utils.data.DataLoader`` that Lightning resumes exactly
  mid-epoch (same batches, same worker seeds) through ``data/loader_state.py``'s DataLoaderFeed.

Under Lightning's DDP strategy every save is collective and writes torchresume's sharded torchrun
checkpoint through ``torchresume.distributed.ShardedStore`` (the same writer,
names, commit and retention as ``torchrun -m torchresume train``): the weights and the optimizer
state through DCP (the replica written once), each rank's own Lightning state (its RNG streams,
its DataLoader position, loop and callback state) as that rank's part. Loading reads the
checkpoint as one (``files/sharded_as_one.py``), so it resumes at any world size and reads in
one process. Any other multi-process strategy (FSDP, DeepSpeed, ...) raises
``UnsupportedStrategyError`` before anything is written.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal
from weakref import proxy

from torch.utils.data import DataLoader

from torchresume import catalog, retention, run_lock
from torchresume.data.loader_state import FEED_KEY, DataLoaderFeed, check_feed_state, fork_hazard
from torchresume.errors import CheckpointConfigError, UnstorableStateError, UnsupportedStrategyError
from torchresume.files import encode_state, read_checkpoint, sharded_as_one, write_encoded
from torchresume.format.reader import Checkpoint
from torchresume.integrations import claim
from torchresume.log import log
from torchresume.manager import CheckpointManager
from torchresume.naming import check_prefix, checkpoint_name, parse_name
from torchresume.retention import KeepLast, RetentionPolicy
from torchresume.save_slot import SaveSlot
from torchresume.state import rng
from torchresume.state.tree import TreeError, flatten
from torchresume.storage.pacing import Pace
from torchresume.world import World, process_group_up

if TYPE_CHECKING:
    from torchresume.distributed import ShardedStore

try:
    import lightning.pytorch as pl
    from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.plugins.io import TorchCheckpointIO
    from lightning.pytorch.strategies import DDPStrategy
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError("torchresume.integrations.lightning needs Lightning 2.6: "
                      "pip install 'torchresume[lightning]'") from exc

KIND = "lightning"  # the document's kind (docs/FORMAT.md)
AHEAD_KEPT = 8  # batches a DataLoader may run ahead of training (Lightning prefetches 1)


RANK_KEY = "lightning"  # a rank's own part of a sharded checkpoint: Lightning's dict without weights
LOADED = ("state_dict", "optimizer_states")  # what DCP writes (sharded, resharded on load)
EPOCH_OVER = "epoch_over"  # a DataLoader position saved at an epoch's end, resumed at another world size


def _refuse_distributed(where: str) -> None:
    world = World.current().size
    if world > 1:
        raise UnsupportedStrategyError(
            f"{where}: under a {world}-process strategy Lightning hands a CheckpointIO the checkpoint on "
            "rank 0 alone, and a torchresume checkpoint needs every rank's part; save through "
            "TorchResumeCheckpoint (its saves are collective sharded checkpoints under strategy='ddp'), "
            "not trainer.save_checkpoint() or Lightning's ModelCheckpoint")


def check_strategy(trainer: pl.Trainer, io: TorchResumeIO) -> None:
    """Refuse, before anything is written, a multi-process run the sharded path cannot honour."""
    strategy = type(trainer.strategy).__name__
    if not isinstance(trainer.strategy, DDPStrategy):
        raise UnsupportedStrategyError(
            f"TorchResumeCheckpoint under {strategy} with {trainer.world_size} processes: torchresume writes "
            "sharded checkpoints under Lightning's DDP strategy only (FSDP, DeepSpeed and model-parallel "
            "strategies are not supported yet); use strategy='ddp', or train on one device")
    if io.slot.write_mb_per_s is not None:
        raise UnsupportedStrategyError(
            f"TorchResumeIO(write_mb_per_s={io.slot.write_mb_per_s}) is not supported under {strategy} with "
            f"{trainer.world_size} processes (each rank writes its part of a sharded checkpoint at full "
            "speed); drop write_mb_per_s, or train on one device")


def _storable(checkpoint: dict[str, Any], path: str) -> dict[str, Any]:
    """Lightning's checkpoint dict, checked: every value a tensor, array, container or JSON scalar."""
    tree = dict(checkpoint)
    try:
        flatten(tree)
    except TreeError as exc:
        raise UnstorableStateError(
            f"{path}: the checkpoint's value at {exc.key!r} cannot be stored without pickle ({exc}); "
            "save only tensors, numbers, strings, bools, None, lists, tuples and dicts there "
            "(e.g. save_hyperparameters(ignore=[...]) for a module or an object)", exc.key) from None
    return tree


def _info(checkpoint: dict[str, Any], path: str) -> dict[str, Any]:
    """What ls and retention read: epoch (1-based), step in it, global step, prefix, save time."""
    info: dict[str, Any] = {"global_step": checkpoint.get("global_step"), "time": time.time(),
                            "lightning": checkpoint.get("pytorch-lightning_version")}
    parsed = parse_name(os.path.basename(path))
    if parsed is not None:
        info["prefix"], info["epoch"], info["step"], _ = parsed
    return info


class TorchResumeIO(CheckpointIO):
    """A Lightning ``CheckpointIO`` writing torchresume checkpoints: durable, checksummed, no pickle.

    Args:
        async_save: ``save_checkpoint`` copies the state into reused host buffers and returns;
            one background thread writes and commits it (``teardown`` waits for it).
        on_busy: what a save does while the previous background one still runs: ``"wait"``
            or ``"skip"``.
        write_mb_per_s: pace background writes to this rate.

    Example:
        ```python
        import lightning.pytorch as pl
        from torchresume.integrations.lightning import TorchResumeIO
        trainer = pl.Trainer(plugins=[TorchResumeIO()], max_epochs=1, logger=False,
                             enable_checkpointing=False)
        ```
    """

    def __init__(self, *, async_save: bool = False, on_busy: str = "wait",
                 write_mb_per_s: float | None = None) -> None:
        self.slot = SaveSlot(async_save=async_save, on_busy=on_busy, write_mb_per_s=write_mb_per_s,
                             name="torchresume-lightning-writer")
        self.on_commit: Callable[[str], object] | None = None  # retention, set by TorchResumeCheckpoint
        self.retention: list[RetentionPolicy] = []  # a sharded save's, set by TorchResumeCheckpoint
        self.sharded: ShardedStore | None = None  # under DDP: the one of the last save
        self._preloaded: tuple[str, Checkpoint] | None = None

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        """Write ``checkpoint`` to ``path`` and commit it (in the background with ``async_save``)."""
        path = os.fspath(path)
        if storage_options is not None:
            raise CheckpointConfigError(f"{path}: TorchResumeIO takes no storage_options (got "
                                        f"{storage_options!r}); pass a URL as the path for object storage")
        _refuse_distributed(path)
        tree = _storable(checkpoint, path)
        if not self.slot.claim(path):
            return
        info = _info(checkpoint, path)
        self.slot.run(path, tree, lambda t, pace: self._commit(t, info, path, pace))

    def _commit(self, tree: Any, info: dict[str, Any], path: str, pace: Pace | None) -> None:
        write_encoded(encode_state(KIND, tree, info=info), path, None, pace=pace)
        if self.on_commit is not None:
            self.on_commit(path)

    def save_sharded(self, checkpoint: dict[str, Any], path: str, module: Any, optimizers: Sequence[Any]) -> None:
        """Collective (every rank, under DDP): ``checkpoint`` as torchresume's sharded checkpoint ``path``.

        The weights and the optimizer state go through DCP (``state/sharded.model_state``,
        the torchrun harness's own); the rest of this rank's Lightning dict (loops, callbacks with
        the RNG, the DataLoader's position) is this rank's part. ``path`` must carry a torchresume
        name (``{prefix}-{epoch}_{step}.ckpt``): the manager's naming and retention go by it.
        """
        from torchresume.state.sharded import model_state
        parsed = parse_name(os.path.basename(path))
        if parsed is None:
            raise CheckpointConfigError(f"{path}: a sharded checkpoint needs a torchresume name "
                                        "({prefix}-{epoch}_{step}.ckpt); save through TorchResumeCheckpoint")
        if len(optimizers) > 1:
            raise UnsupportedStrategyError(
                f"{path}: {len(optimizers)} optimizers under DDP; torchresume's sharded checkpoint holds one "
                "(DCP keys its state by parameter name): return one optimizer from configure_optimizers")
        rest = _storable({k: v for k, v in checkpoint.items() if k not in LOADED}, path)
        manager = self._manager_for(os.path.dirname(path), parsed[0])
        manager.save(model_state(module, optimizers[0] if optimizers else None), parsed[1], parsed[2],
                     rank_state={RANK_KEY: rest}, info=_info(checkpoint, path))

    def _manager_for(self, directory: str, prefix: str) -> ShardedStore:
        from torchresume.distributed import ShardedStore
        current = self.sharded
        if current is not None and (current.directory, current.prefix) == (directory.rstrip("/"), prefix):
            return current
        if current is not None:
            current.close()
        self.sharded = ShardedStore(
            directory, prefix=prefix, async_save=self.slot.async_save, on_busy=self.slot.on_busy,
            retention=self.retention or [KeepLast(sys.maxsize)])  # no policy: keep=None keeps all
        return self.sharded

    def wait(self) -> None:
        """Wait for a background save (a sharded one too), raising its failure."""
        self.slot.wait()
        if self.sharded is not None:
            self.sharded.wait()

    def preload(self, path: str, ckpt: Checkpoint) -> None:
        """Hand over a checkpoint already read and verified, so loading ``path`` does not read it again."""
        self._preloaded = (path, ckpt)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None
                        ) -> dict[str, Any]:
        """Read and verify ``path`` (every checksum) and return Lightning's checkpoint dict.

        A sharded checkpoint is read as one (any world size): its weights and optimizer state, and
        this rank's own part (rank 0's for a rank the saving run did not have, without its RNG).
        """
        self.wait()
        path = os.fspath(path)
        pre, self._preloaded = self._preloaded, None
        ckpt = pre[1] if pre is not None and pre[0] == path else read_checkpoint(path)
        if ckpt.format == sharded_as_one.FORMAT:
            return _from_sharded(ckpt, path)
        if not isinstance(ckpt.tree, dict):
            raise CheckpointConfigError(f"{path} holds no Lightning checkpoint (a {ckpt.kind!r} file)")
        return dict(ckpt.tree)

    def remove_checkpoint(self, path: Any) -> None:
        """Delete one checkpoint (marker first on object storage)."""
        self.wait()
        catalog.delete(os.fspath(path))

    def teardown(self) -> None:
        """Wait for a background save (raising its failure) and free the writer."""
        self.slot.close()
        if self.sharded is not None:
            self.sharded.close()


def _from_sharded(ckpt: Checkpoint, path: str) -> dict[str, Any]:
    """Lightning's checkpoint dict for this rank from a sharded checkpoint read as one."""
    tree = dict(ckpt.tree)
    ranks = tree.pop(sharded_as_one.RANK_STATES, None) or {}
    optimizer = tree.pop("optimizer", None)
    tree.pop("extra", None)
    here = World.current()
    rank, world = here.rank, here.size
    state = _own_state(ranks, rank, path)
    saved_world = int(ckpt.info.get("world_size") or len(ranks))
    if saved_world != world:
        state = _positions_at(state, path, saved_world, world)
        if rank == 0:
            log.info("resuming at %d processes from a checkpoint of %d taken at an epoch's end: weights, "
                     "optimizer state and loops are restored, the next epoch starts; rank r < %d continues "
                     "old rank r's RNG streams, any other keeps its seed", world, saved_world, saved_world)
    return {**state, "state_dict": tree, "optimizer_states": [] if optimizer is None else [optimizer]}


def _own_state(ranks: dict[int, Any], rank: int, path: str) -> dict[str, Any]:
    """This rank's saved Lightning state; for a rank the saving run did not have, rank 0's without
    its RNG streams (the rank keeps its seeded ones)."""
    own = ranks.get(rank)
    if isinstance(own, dict) and RANK_KEY in own:
        return dict(own[RANK_KEY])
    first = ranks.get(0)
    if not isinstance(first, dict) or RANK_KEY not in first:
        raise CheckpointConfigError(f"{path} holds no Lightning state (a sharded checkpoint of another "
                                    "trainer); resume it with the trainer that wrote it")
    return dict(_without_rng(first[RANK_KEY]))


def _positions_at(node: Any, path: str, saved: int, world: int) -> Any:
    """``node`` with each DataLoader position made valid at another world size: only an epoch's end
    carries over (Lightning's DistributedSampler splits every epoch by the world size)."""
    if isinstance(node, dict) and node.get(FEED_KEY) is not None and "consumed" in node:
        if node.get("batches") is None or int(node["consumed"]) < int(node["batches"]):
            raise UnsupportedStrategyError(
                f"{path} was saved by {saved} processes mid-epoch; at {world} Lightning's DistributedSampler "
                "splits the epoch otherwise, so that position does not exist: resume at "
                f"{saved} processes, or from a checkpoint taken at an epoch's end (every_n_epochs=1, or "
                "every_n_train_steps dividing the steps of an epoch)")
        return {**node, "batches": None, EPOCH_OVER: True}
    if isinstance(node, dict):
        return {k: _positions_at(v, path, saved, world) for k, v in node.items()}
    if isinstance(node, list):
        return [_positions_at(v, path, saved, world) for v in node]
    return node


def _without_rng(node: Any) -> Any:
    """``node`` without the RNG streams torchresume saved in it (the callback's and each DataLoader
    position's ``rng``)."""
    if isinstance(node, dict):
        return {k: _without_rng(v) for k, v in node.items() if k != "rng"}
    if isinstance(node, list):
        return [_without_rng(v) for v in node]
    return node


# -- the DataLoader's position -----------------------------------------------------------------

class _Position:
    """Where a resumable DataLoader stands: DataLoaderFeed's epoch start plus the batches ahead.

    Lightning fetches one batch ahead of training, so a checkpoint taken after step k has
    already loaded batch k+1 (drawing from the RNGs in the main process when there are no
    workers). For each batch handed out the RNG state before it was loaded is kept; a resume
    loads those batches again from those states, then puts back the checkpoint's RNG.
    """

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader
        self.feed = DataLoaderFeed(loader)
        self.raw = False
        self.pending: dict[str, Any] | None = None
        self.yielded = 0
        self.ahead: deque[tuple[int, dict[str, Any]]] = deque(maxlen=AHEAD_KEPT)
        self.progress: Callable[[], tuple[int, int]] | None = None  # (epoch, batches trained): the callback's

    @contextmanager
    def raw_iterators(self) -> Iterator[None]:
        self.raw = True
        try:
            yield
        finally:
            self.raw = False

    def state_dict(self) -> dict[str, Any]:
        if self.progress is None:
            raise CheckpointConfigError(
                "a resumable() DataLoader is saved by TorchResumeCheckpoint, which knows how many of its "
                "batches were trained on (Lightning fetches ahead): add TorchResumeCheckpoint(...) to the "
                "Trainer's callbacks")
        epoch, trained = self.progress()
        state = self.feed.state_dict(epoch, trained) or {}
        state["rng"] = rng.capture()
        state["ahead"] = [s for i, s in self.ahead if i > trained]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_feed_state(state, self.feed.kind, len(self.loader))
        self.pending = dict(state)

    def iterate(self) -> Iterator[Any]:
        """The epoch's batches, the loader's iterator made at the first ``next``: Lightning makes this
        iterator before it sets a DistributedSampler's epoch (and a resumed run before its start
        hooks), while a loader with workers fetches in the sampler's order at once."""
        pending, self.pending = self.pending, None
        if pending is not None and (int(pending["consumed"]) >= len(self.loader) or pending.get(EPOCH_OVER)):
            pending = None  # saved at the epoch's end: the next one starts here (the callback put the RNG back)
        done = int(pending["consumed"]) if pending is not None else 0
        return _Tracked(self, lambda: self._begin(pending, done), done)

    def _begin(self, pending: dict[str, Any] | None, done: int) -> tuple[Iterator[Any], list[Any]]:
        """The loader's iterator past ``done`` batches, and the batches fetched ahead loaded again."""
        if pending is not None and "rng" in pending:  # none: a rank new to the run keeps its own
            rng.restore(pending["rng"])  # the checkpoint's state: the feed puts it back after seeking
        self.feed.pending = pending
        with self.raw_iterators():
            source = iter(self.feed.batches(done, len(self.loader)))
            again = [self._load_again(source, s) for s in (pending or {}).get("ahead", [])]
        return source, again

    def _load_again(self, source: Iterator[Any], before: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        now = rng.capture()
        rng.restore(before)
        batch = next(source)
        rng.restore(now)
        return batch, before


class _Tracked:
    """The iterator Lightning gets: the loader's batches, each with the RNG state it was loaded from."""

    def __init__(self, position: _Position, begin: Callable[[], tuple[Iterator[Any], list[Any]]], done: int) -> None:
        self.position, self.begin = position, begin
        self.source: Iterator[Any] | None = None
        self.again: list[tuple[Any, dict[str, Any]]] = []
        position.yielded = done
        position.ahead.clear()

    def __iter__(self) -> _Tracked:
        return self

    def __next__(self) -> Any:
        if self.source is None:
            self.source, self.again = self.begin()
        if self.again:
            batch, before = self.again.pop(0)
        else:
            before = rng.capture()
            batch = next(self.source)
        self.position.yielded += 1
        self.position.ahead.append((self.position.yielded, before))
        return batch

    def __len__(self) -> int:
        return len(self.position.loader)


class _ResumableLoader(DataLoader):
    """The methods a resumable DataLoader gains (its class becomes a subclass of this and its own)."""

    def _torchresume_position(self) -> _Position:
        position = self.__dict__.get("_tr_position")
        if position is None:
            position = self.__dict__["_tr_position"] = _Position(self)
        return position

    def _get_iterator(self) -> Any:
        position = self._torchresume_position()
        if position.raw:
            return super()._get_iterator()
        return position.iterate()

    def state_dict(self) -> dict[str, Any]:
        """The data position: the epoch's start, the batches trained on, the RNG now."""
        return self._torchresume_position().state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from ``state`` when the next iterator is made."""
        self._torchresume_position().load_state_dict(state)


_CLASSES: dict[type, type] = {}


def resumable(loader: DataLoader) -> DataLoader:
    """Make ``loader`` (a plain torch DataLoader) resume mid-epoch exactly under Lightning; returns it.

    The same object gains ``state_dict``/``load_state_dict`` (Lightning stores them in the
    checkpoint's loop state) and, on resume, re-makes the interrupted epoch's iterator: the same
    order, the same worker seeds, the batches already trained on skipped. ``TorchResumeCheckpoint``
    calls it on a DataLoader given to ``Trainer.fit``; call it yourself in ``train_dataloader()``
    (and have a ``TorchResumeCheckpoint`` among the callbacks: it saves the position).
    A loader with its own ``state_dict`` (torchdata's StatefulDataLoader) is returned unchanged.

    Example:
        ```python
        from torch.utils.data import DataLoader, TensorDataset
        from torchresume.integrations.lightning import resumable
        loader = resumable(DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4, shuffle=True))
        assert callable(loader.load_state_dict) and isinstance(loader, DataLoader)
        ```
    """
    if not isinstance(loader, DataLoader):
        raise CheckpointConfigError(f"resumable() takes a torch DataLoader, got {type(loader).__name__}")
    if isinstance(loader, _ResumableLoader) or callable(getattr(loader, "state_dict", None)):
        return loader
    if loader.num_workers > 0 and loader.persistent_workers:
        raise CheckpointConfigError(
            "a DataLoader with persistent_workers=True cannot be resumed exactly (its workers' random "
            "state runs on across epochs and is not saved); make it with persistent_workers=False")
    cls = type(loader)
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"Resumable{cls.__name__}", (_ResumableLoader, cls), {})
    loader.__class__ = _CLASSES[cls]
    return loader


# -- the callback ------------------------------------------------------------------------------

# ModelCheckpoint's parameters that conflict with torchresume's naming, retention or exact resume: the
# value torchresume works with, and why another cannot be honoured (Lightning 2.6's signature).
_REFUSED: dict[str, tuple[Any, str]] = {
    "filename": (None, "torchresume names every checkpoint {prefix}-{epoch}_{step}.ckpt (ls, retention and "
                       "ckpt_path='last' go by that name): drop filename and name the run with prefix="),
    "save_top_k": (-1, "torchresume's retention decides which checkpoints stay (newest first, the newest never "
                       "deleted): drop save_top_k and pass keep=N (or retention policies)"),
    "save_weights_only": (False, "ckpt_path='last' resumes the newest checkpoint, which must hold the whole "
                                 "training state: drop save_weights_only (load_checkpoint and torchresume "
                                 "convert read the weights of any checkpoint)"),
    "save_on_exception": (False, "a save while an exception unwinds holds a step that did not finish, and a "
                                 "resume from it would skip that step's batch: drop save_on_exception (a run "
                                 "resumes exactly from its last scheduled save)"),
    "auto_insert_metric_name": (True, "it shapes filename=, which torchresume's names replace: drop "
                                      "auto_insert_metric_name"),
    "enable_version_counter": (False, "a torchresume name is unique to its epoch and step (a save of the same "
                                      "step replaces it): drop enable_version_counter"),
}


def _refuse_options(**given: Any) -> None:
    """Refuse, by name, a ModelCheckpoint parameter whose Lightning meaning torchresume cannot keep."""
    for name, value in given.items():
        accepted, why = _REFUSED[name]
        if value != accepted or type(value) is not type(accepted):
            raise CheckpointConfigError(f"TorchResumeCheckpoint({name}={value!r}) is not supported: {why}")


def _training_ends(trainer: pl.Trainer, at_epoch_end: bool) -> bool:
    """Whether the fit loop stops after this step (or, ``at_epoch_end``, this epoch): its ``done``
    without the messages it prints."""
    loop = trainer.fit_loop
    if loop.max_steps != -1 and trainer.global_step >= loop.max_steps:
        return True
    if not at_epoch_end:
        return False
    max_epochs = loop.max_epochs
    processed = loop.epoch_progress.current.processed  # type: ignore[attr-defined]  # a _Progress of _StartedTracker
    if max_epochs is not None and max_epochs != -1 and processed >= max_epochs:
        return True
    return bool(trainer.should_stop and loop._can_stop_early)


def _make_resumable(data: Any) -> None:
    """Every torch DataLoader in what a ``*_dataloader()`` hook (or ``fit``) gave: made ``resumable``."""
    from lightning.pytorch.utilities.combined_loader import CombinedLoader
    loaders = data.flattened if isinstance(data, CombinedLoader) else CombinedLoader(data).flattened
    for loader in loaders:
        if isinstance(loader, DataLoader):
            resumable(loader)


class TorchResumeCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` on torchresume's core: names, retention, newest valid, RNG, data.

    Files are ``{prefix}-{epoch}_{step}.ckpt`` (epoch 1-based, step within it) written by
    ``TorchResumeIO`` (installed on the trainer's strategy when it has Lightning's default IO);
    ``keep`` (an int or torchresume retention policies) runs after each commit, never deleting
    the newest. ``Trainer.fit(ckpt_path="last")`` resumes from the newest checkpoint of ``prefix``
    that reads and verifies, skipping damaged ones by name. Each checkpoint holds every RNG
    (python, numpy, torch) and the training DataLoader's position (a DataLoader given to ``fit`` or
    made by ``train_dataloader()`` is made ``resumable``), so a resumed run sees the same batches and
    draws the same random numbers as an uninterrupted one. The end of training is saved when the
    schedule did not save it, so a rerun of a finished command trains nothing. The directory's run
    lock is held from resume discovery to the end of ``fit`` (under DDP by rank 0 for the job; every
    rank raises the same ``RunLockedError`` when another live run holds it); only then are a killed
    writer's temporary files and this run's unfinished sharded parts removed.

    Lightning's ``filename``, ``save_top_k``, ``save_weights_only``, ``save_on_exception``,
    ``auto_insert_metric_name`` and ``enable_version_counter`` are taken only at the value
    torchresume's naming, retention and exact resume work with (their defaults here); any other is a
    ``CheckpointConfigError`` naming the parameter and what to use instead.

    Args:
        dirpath: the checkpoint directory (a path or an ``s3://`` URL).
        prefix: the run's name in file names (no ``-`` or ``/``).
        keep: how many checkpoints to keep (newest first), or retention policies; None keeps all.
        every_n_train_steps: save every N training steps (as Lightning's ModelCheckpoint).
        every_n_epochs: save every N epochs.
        train_time_interval: save every ``timedelta`` of training.
        monitor: the metric recorded for ``save_top_k``-style choices (all are kept: ``keep`` decides).
        mode: ``"min"`` or ``"max"`` for ``monitor``.
        verbose: Lightning's save messages.
        save_last: ``False``: the end of training is not saved unless the schedule saves it; otherwise
            (``None``, ``True``, ``"link"``) it is. No ``last.ckpt`` is written: the newest is the last.
        save_on_train_epoch_end: as Lightning's (``every_n_epochs`` saves after training or validation).

    Example:
        ```python
        import lightning.pytorch as pl
        from torchresume.integrations.lightning import TorchResumeCheckpoint
        ckpt = TorchResumeCheckpoint("runs/lit", prefix="lit", every_n_train_steps=5, keep=3)
        trainer = pl.Trainer(callbacks=[ckpt], max_epochs=1, logger=False)
        ```
    """

    def __init__(self, dirpath: str, *, prefix: str = "lightning",
                 keep: Sequence[RetentionPolicy] | int | None = 5, every_n_train_steps: int | None = None,
                 every_n_epochs: int | None = None, train_time_interval: Any = None,
                 monitor: str | None = None, mode: str = "min", verbose: bool = False,
                 save_last: bool | Literal["link"] | None = None, save_on_train_epoch_end: bool | None = None,
                 filename: str | None = None, save_top_k: int = -1, save_weights_only: bool = False,
                 save_on_exception: bool = False, auto_insert_metric_name: bool = True,
                 enable_version_counter: bool = False) -> None:
        _refuse_options(filename=filename, save_top_k=save_top_k, save_weights_only=save_weights_only,
                        save_on_exception=save_on_exception, auto_insert_metric_name=auto_insert_metric_name,
                        enable_version_counter=enable_version_counter)
        # The newest torchresume checkpoint is the last one (ckpt_path="last"): no last.ckpt copy or link
        # (_save_last_checkpoint), only the end of training saved unless save_last=False.
        super().__init__(dirpath=dirpath, monitor=monitor, mode=mode, verbose=verbose, save_top_k=-1,
                         save_last=save_last is not False, save_on_train_epoch_end=save_on_train_epoch_end,
                         every_n_train_steps=every_n_train_steps, every_n_epochs=every_n_epochs,
                         train_time_interval=train_time_interval, enable_version_counter=False)
        self.prefix = check_prefix(prefix)
        self.policies: list[RetentionPolicy] = [KeepLast(keep)] if isinstance(keep, int) else list(keep or [])
        self._trainer: pl.Trainer | None = None
        self._deferred = False  # the last batch's save, taken at the epoch's end
        self._fork_warned: set[str] = set()  # fork_hazard warnings said (once each)
        self._claim: CheckpointManager | None = None  # holds the run lock, from resume discovery to teardown
        self._sanity_steps: int | float | None = None  # the trainer's, while a finished run's sanity check is skipped

    def _io(self, trainer: pl.Trainer) -> TorchResumeIO:
        """The strategy's TorchResumeIO, installed in place of Lightning's default pickle IO."""
        io = trainer.strategy.checkpoint_io
        if type(io) is TorchCheckpointIO:
            io = trainer.strategy.checkpoint_io = TorchResumeIO()
        if not isinstance(io, TorchResumeIO):
            raise CheckpointConfigError(
                f"TorchResumeCheckpoint writes through TorchResumeIO, but the trainer has {type(io).__name__}; "
                "pass plugins=[TorchResumeIO()] (or no CheckpointIO plugin) to the Trainer")
        io.on_commit = self._after_commit
        io.retention = self.policies
        return io

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        io = self._io(trainer)
        if stage == "fit":
            self._take_lock(trainer)  # a strategy torchresume cannot honour is refused first
        elif trainer.world_size > 1:
            check_strategy(trainer, io)
        self._lightning_setup(trainer, pl_module, stage)
        self._trainer = trainer
        source = getattr(trainer.fit_loop._data_source, "instance", None)
        if stage == "fit":
            self._resume_hooks(trainer)
        if stage == "fit" and isinstance(source, DataLoader):
            resumable(source)
        validation = getattr(trainer.fit_loop.epoch_loop.val_loop._data_source, "instance", None)
        self._warn_of_forks([x for x in (source, validation) if isinstance(x, DataLoader)], trainer)

    def _lightning_setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Lightning's setup, less its "exists and is not empty" warning when the one entry is the run
        lock this callback took just before. Its warnings are caught and every other one is issued
        again as it was; a change of Lightning's wording shows the warning, never hides another."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            super().setup(trainer, pl_module, stage)
        for w in caught:
            if not self._lock_alone(str(w.message)):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)

    def _lock_alone(self, message: str) -> bool:
        """Whether ``message`` is Lightning's non-empty warning for a directory holding only the lock."""
        dirpath = self.dirpath
        return (isinstance(dirpath, str) and message == f"Checkpoint directory {dirpath} exists and is not empty."
                and os.path.isdir(dirpath) and set(os.listdir(dirpath)) <= {run_lock.LOCK_NAME})

    def _resume_hooks(self, trainer: pl.Trainer) -> None:
        """Make the training DataLoaders resumable as Lightning gets them, before it loads their saved
        position: from ``fit``'s argument or a module's (data module's) ``train_dataloader()``, each
        time it is called (``reload_dataloaders_every_n_epochs`` too)."""
        source = trainer.fit_loop._data_source
        if "dataloader" in vars(source):  # wrapped by an earlier fit of this trainer
            return
        hook = source.dataloader

        def dataloader() -> Any:
            data = hook()
            _make_resumable(data)
            return data
        source.dataloader = dataloader  # type: ignore[method-assign]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._watch_loaders(trainer)
        for combined in (trainer.fit_loop._combined_loader, trainer.fit_loop.epoch_loop.val_loop._combined_loader):
            self._warn_of_forks(combined.flattened if combined is not None else [], trainer)
        self._warn_of_replays(trainer)

    def _warn_of_replays(self, trainer: pl.Trainer) -> None:
        """Rank 0 says, once per run, which training data a mid-epoch resume cannot continue exactly:
        an iterable that is no torch DataLoader and has no ``state_dict`` of its own."""
        combined = trainer.fit_loop._combined_loader
        for data in combined.flattened if combined is not None else []:
            if isinstance(data, DataLoader) or callable(getattr(data, "state_dict", None)):
                continue
            if trainer.is_global_zero:
                log.warning("warning: the training data (%s) is no torch DataLoader and has no state_dict(): "
                            "a resume mid-epoch starts its epoch over and is not exact; train on a "
                            "DataLoader (TorchResumeCheckpoint makes it resumable) or on a loader with "
                            "state_dict()/load_state_dict() (torchdata's StatefulDataLoader)", type(data).__name__)

    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_sanity_check_start(trainer, pl_module)
        if _training_ends(trainer, at_epoch_end=True):
            # Resumed from the end of training (a rerun of a finished command): fit trains and validates
            # nothing, so the sanity check's validation batches are skipped too.
            self._sanity_steps, trainer.num_sanity_val_steps = trainer.num_sanity_val_steps, 0

    def on_sanity_check_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_sanity_check_end(trainer, pl_module)
        if self._sanity_steps is not None:
            trainer.num_sanity_val_steps, self._sanity_steps = self._sanity_steps, None

    def _warn_of_forks(self, loaders: list[Any], trainer: pl.Trainer) -> None:
        """Rank 0 warns once of DataLoaders that would fork their workers from a rank (``fork_hazard``):
        at set-up for the loaders given to ``fit`` (before the sanity check's validation workers
        start), at the start of training for those a module or data module makes."""
        for loader in loaders:
            hazard = fork_hazard(loader)
            if hazard and hazard not in self._fork_warned and trainer.is_global_zero:
                self._fork_warned.add(hazard)
                log.warning("warning: %s", hazard)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._watch_loaders(trainer)

    def _watch_loaders(self, trainer: pl.Trainer) -> None:
        """Tell each resumable training loader how far training got (what a checkpoint records)."""
        combined = trainer.fit_loop._combined_loader
        for loader in combined.flattened if combined is not None else []:
            if isinstance(loader, _ResumableLoader):
                loader._torchresume_position().progress = lambda: (
                    trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.ready)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            # Lightning 2.6 resumes a save from the last batch's end with its epoch count off by one
            # (the next resume repeats an epoch): the epoch's end takes that save instead.
            self._deferred = True
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if _training_ends(trainer, at_epoch_end=False):  # max_steps mid-epoch
            self._save_final(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        deferred, self._deferred = self._deferred, False
        due = self._every_n_train_steps >= 1 and trainer.global_step % self._every_n_train_steps == 0
        if deferred and due and not self._should_skip_saving_checkpoint(trainer):
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))
        if _training_ends(trainer, at_epoch_end=True):
            self._save_final(trainer)

    def _save_final(self, trainer: pl.Trainer) -> None:
        """The end of training, saved when no scheduled save took it (``save_last=False`` opts out): a rerun
        of the finished command resumes there and trains nothing."""
        if not self.save_last or self._should_skip_saving_checkpoint(trainer):
            return
        candidates = self._monitor_candidates(trainer)
        if self.monitor is None or self.monitor in candidates:
            self._save_topk_checkpoint(trainer, candidates)
        else:  # the metric is not logged (yet): saved all the same, not ranked
            self._save_checkpoint(trainer, self.format_checkpoint_name(candidates))

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, Any]) -> None:
        """No ``last.ckpt`` copy or link: the newest torchresume checkpoint is the last (``ckpt_path="last"``)."""

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        """One save; under DDP a collective one: every rank's state into one sharded checkpoint."""
        if self._claim is not None:  # object storage: a heartbeat older than run_lock.STALE_S is taken over
            self._claim.hold_lock()  # the manager's renewal (rank 0; under DDP a failure is said, not raised)
        if trainer.world_size == 1:
            super()._save_checkpoint(trainer, filepath)
            return
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(self.save_weights_only)
        self._io(trainer).save_sharded(checkpoint, filepath, trainer.lightning_module, trainer.optimizers)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def format_checkpoint_name(self, metrics: dict[str, Any], filename: str | None = None,
                               ver: int | None = None, prefix: str | None = None) -> str:
        """``{dirpath}/{prefix}-{epoch}_{step}.ckpt``: torchresume's name for the position now."""
        trainer = self._trainer
        if trainer is None:
            return super().format_checkpoint_name(metrics, filename, ver, prefix)
        step = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        return os.path.join(str(self.dirpath), checkpoint_name(self.prefix, trainer.current_epoch + 1, step))

    def _find_last_checkpoints(self, trainer: pl.Trainer) -> set[str]:
        """``ckpt_path="last"``: the newest checkpoint of ``prefix`` that reads and verifies (rank 0's
        choice on every rank under DDP; rank 0's failure raised on every rank)."""
        io = self._io(trainer)
        held = self._take_lock(trainer)  # nothing is read before the lock is held

        def newest() -> str | None:
            directory = str(self.dirpath)
            try:
                entries = catalog.list_checkpoints(directory, verify=False)
            except FileNotFoundError:
                return None
            found = catalog.newest_readable(entries, directory, run=self.prefix)
            if found is None:
                return None
            io.preload(found[0].path, found[1])
            return found[0].path
        path = held.world.on_rank_0(newest)
        if path is None:
            return set()
        if trainer.is_global_zero:
            log.info("resuming from %s", path)
        return {path}

    def _after_commit(self, path: str) -> None:
        if self.policies:
            retention.apply(catalog.list_checkpoints(os.path.dirname(path), verify=False, prefix=self.prefix),
                            self.policies, protect=path)

    def state_dict(self) -> dict[str, Any]:
        """Lightning's ModelCheckpoint state plus every RNG at the moment of the save."""
        return {**super().state_dict(), "rng": rng.capture()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "rng" in state_dict:
            rng.restore(state_dict["rng"])

    def _take_lock(self, trainer: pl.Trainer) -> CheckpointManager:
        """The directory claimed for this fit (``claim``: the run lock, then a killed writer's leftovers
        removed) from ``ckpt_path="last"``'s discovery on; under DDP in the process group, which
        Lightning joins only after discovery."""
        if self._claim is None:
            if trainer.world_size > 1:
                check_strategy(trainer, self._io(trainer))
                if not process_group_up():  # the lock is collective
                    trainer.strategy.setup_environment()
            self._claim = claim(str(self.dirpath), self.prefix)
        return self._claim

    def _release_lock(self) -> None:
        held, self._claim = self._claim, None
        if held is not None:
            held.close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        io = trainer.strategy.checkpoint_io
        try:
            if self._claim is not None and isinstance(io, TorchResumeIO):
                io.wait()  # a background save ends before the lock goes
        except Exception as failed:  # the run's own exception goes on; this one is said
            log.warning("warning: a background save failed too: %s", failed)
        finally:
            self._release_lock()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        try:
            io = trainer.strategy.checkpoint_io
            if isinstance(io, TorchResumeIO):
                io.wait()
        finally:
            self._release_lock()


__all__ = ["TorchResumeCheckpoint", "TorchResumeIO", "resumable"]
