"""Where the training data stands, saved and restored exactly, for whatever ``Model`` is given.

A *feed* wraps the training data of one run:

- ``PositionFeed``: torchresume's own datasets (a ``ResumableBatchSampler``
  keeps the position; the order of epoch ``e`` is a function of its seed).
- ``DataLoaderFeed``: a plain ``torch.utils.data.DataLoader``. Its epoch order
  and its workers' seeds come from the random number generators at the moment
  the epoch's iterator is made (``RandomSampler`` draws a seed from the global
  torch RNG or its generator; the iterator draws ``base_seed``, from which each
  worker is seeded). The feed records those generators at each epoch's start;
  on resume it puts them back, makes the iterator again (same order, same
  worker seeds), fast-forwards past the batches already trained on, and then
  puts the generators back to the checkpoint's mid-epoch state. Without workers
  the skipped indices are drawn from the sampler but their data is never
  loaded; with workers the skipped batches go through the workers again (data
  loading only) so that any random augmentation in them continues exactly.
- ``StatefulFeed``: anything with its own ``state_dict``/``load_state_dict``
  taken mid-iteration (torchdata's ``StatefulDataLoader``): its native state.
- ``ReplayFeed``: any other iterable of batches; a resumed epoch is re-read
  from its start and the batches already trained on are skipped. Exact only if
  the iterable yields the same batches every time; the run says so at start-up.
"""

from __future__ import annotations

import itertools
import multiprocessing
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from torchresume.state import rng
from torchresume.state.tree import map_tensors

_END = object()
FEED_KEY = "feed"  # marks a sampler sub-tree written by a DataLoaderFeed or StatefulFeed


class Feed:
    """The training data of one run: batches per epoch, and the position as state."""

    kind = "iterable"

    def __init__(self, data: Any) -> None:
        self.data = data
        self.pending: dict[str, Any] | None = None  # restored state, used by the next epoch

    def warning(self) -> str | None:
        """One line for start-up when this data cannot be resumed exactly; None when it can."""
        return None

    def set_epoch(self, epoch_index: int) -> None:
        set_epoch = getattr(getattr(self.data, "sampler", None), "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch_index)

    def batches(self, done: int, total: int) -> Iterable[Any]:
        """The current epoch's batches after the first ``done`` (``total`` per epoch)."""
        raise NotImplementedError

    def state_dict(self, epoch_index: int, consumed: int) -> dict[str, Any] | None:
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pending = dict(state)

    def mark_lacking(self, epoch_index: int, done: int) -> None:
        """The checkpoint held no data state: continue from (epoch, done) as best we can."""


class PositionFeed(Feed):
    """torchresume's ArrayDataset (and anything with a ResumableBatchSampler): it seeks itself."""

    kind = "position"

    def set_epoch(self, epoch_index: int) -> None:
        if hasattr(self.data.sampler, "set_epoch"):
            self.data.sampler.set_epoch(epoch_index)

    def batches(self, done: int, total: int) -> Iterable[Any]:
        return self.data

    def state_dict(self, epoch_index: int, consumed: int) -> dict[str, Any] | None:
        state = dict(self.data.state_dict())
        state.update(epoch=epoch_index, consumed=consumed)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.data.load_state_dict(state)

    def mark_lacking(self, epoch_index: int, done: int) -> None:
        self.data.sampler.epoch, self.data.sampler.consumed = epoch_index, done


class _Generators:
    """The generators a DataLoader's iterator draws from when it is made."""

    def __init__(self, loader: Any) -> None:
        self.named: dict[str, torch.Generator] = {}
        gen = getattr(loader, "generator", None)
        if isinstance(gen, torch.Generator):
            self.named["loader"] = gen
        sampler_gen = getattr(getattr(loader, "sampler", None), "generator", None)
        if isinstance(sampler_gen, torch.Generator) and sampler_gen is not gen:
            self.named["sampler"] = sampler_gen

    def capture(self) -> dict[str, Any]:
        return {"global": rng.capture(), **{k: g.get_state() for k, g in self.named.items()}}

    def restore(self, state: dict[str, Any]) -> None:
        rng.restore(state["global"])
        for name, gen in self.named.items():
            if name in state:
                gen.set_state(state[name].clone())


class DataLoaderFeed(Feed):
    """A plain torch DataLoader, resumed exactly by re-making the epoch's iterator."""

    kind = "torch.utils.data.DataLoader"

    def __init__(self, data: Any) -> None:
        super().__init__(data)
        self.generators = _Generators(data)
        self.epoch_start: dict[str, Any] | None = None
        from torch.utils.data import IterableDataset
        self.iterable = isinstance(data.dataset, IterableDataset)

    def warning(self) -> str | None:
        name = type(self.data.dataset).__name__
        if self.iterable and not hasattr(self.data.dataset, "state_dict"):
            return (f"the training DataLoader reads an IterableDataset ({name}) without state_dict(): "
                    "a resumed epoch re-reads it from its start and skips the batches already "
                    "trained on, which is exact only if it yields the same batches each time "
                    "(use torchdata's StatefulDataLoader with a stateful dataset for exact resume)")
        if self.data.num_workers > 0 and getattr(self.data, "persistent_workers", False):
            return ("the training DataLoader has persistent_workers=True: its workers' random state "
                    "runs on across epochs and is not saved, so random augmentation in workers "
                    "differs after a resume (persistent_workers=False resumes exactly)")
        return None

    def batches(self, done: int, total: int) -> Iterable[Any]:
        pending, self.pending = self.pending, None
        if done >= total:
            return ()  # the epoch was finished before the stop: never re-read it
        if done == 0 or pending is None:
            self.epoch_start = self.generators.capture()
            if done == 0:
                return self.data
            return itertools.islice(iter(self.data), done, None)  # no saved start: best effort
        return self._resumed(pending, done)

    def _resumed(self, pending: dict[str, Any], done: int) -> Iterator[Any]:
        now = rng.capture()  # the checkpoint's mid-epoch state, restored already
        start = pending["epoch_start"]
        self.epoch_start = start
        self.generators.restore(start)
        it = iter(self.data)  # the same order and worker seeds as the interrupted epoch
        if self.data.num_workers == 0 and not self.iterable and hasattr(it, "_next_index"):
            for _ in range(done):  # draw the skipped indices; never load their data
                it._next_index()
            it._num_yielded += done
        else:
            for _ in itertools.islice(it, done):  # through the workers: their RNG continues exactly
                pass
        rng.restore(now)
        for name, gen in self.generators.named.items():
            if name in pending.get("generators", {}):
                gen.set_state(pending["generators"][name].clone())
        return it

    def state_dict(self, epoch_index: int, consumed: int) -> dict[str, Any] | None:
        return {FEED_KEY: self.kind, "epoch": epoch_index, "consumed": consumed,
                "batches": len(self.data), "epoch_start": self.epoch_start,
                "generators": {k: g.get_state() for k, g in self.generators.named.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_feed_state(state, self.kind, len(self.data))
        self.pending = dict(state)


class StatefulFeed(Feed):
    """Data with its own state_dict/load_state_dict taken mid-iteration (StatefulDataLoader)."""

    kind = "stateful"

    def warning(self) -> str | None:
        dataset = getattr(self.data, "dataset", None)
        if getattr(self.data, "num_workers", 0) > 0 and not hasattr(dataset, "state_dict"):
            return (f"{type(self.data).__name__} re-seeds its workers on resume and restores only "
                    f"a dataset's own state_dict(), which {type(dataset).__name__} lacks: exact "
                    "only if the dataset draws no random numbers in the workers")
        return None

    def batches(self, done: int, total: int) -> Iterable[Any]:
        pending, self.pending = self.pending, None
        if pending is None:
            if done >= total:
                return ()
            if done:
                return itertools.islice(iter(self.data), done, None)
            return self.data
        return self._resumed(done)

    def _resumed(self, done: int) -> Iterable[Any]:
        now = rng.capture()
        it = iter(self.data)  # continues from the loaded state (yields nothing at an epoch's end)
        rng.restore(now)  # making the iterator may draw; the checkpoint's state wins
        if done:
            return it
        # Saved after an epoch's end hooks: the loaded state is that epoch's end, the next is fresh.
        first = next(it, _END)
        return self.data if first is _END else itertools.chain([first], it)

    def state_dict(self, epoch_index: int, consumed: int) -> dict[str, Any] | None:
        return {FEED_KEY: self.kind, "epoch": epoch_index, "consumed": consumed,
                "state": self.data.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_feed_state(state, self.kind, None)
        # Loaded tensors may be views into a mapped file; generators want their own storage.
        self.data.load_state_dict(map_tensors(state["state"], lambda t: t.clone()))
        self.pending = dict(state)


class ReplayFeed(Feed):
    """Any other iterable of batches: a resumed epoch is re-read and the done batches skipped."""

    def warning(self) -> str | None:
        if isinstance(self.data, (list, tuple)):
            return None  # the same batches every time: skipping is exact
        return (f"the training data ({type(self.data).__name__}) has no state_dict(): a resumed "
                "epoch re-reads it from its start and skips the batches already trained on, which "
                "is exact only if it yields the same batches in the same order each time "
                "(a torch DataLoader or torchdata's StatefulDataLoader resumes exactly)")

    def batches(self, done: int, total: int) -> Iterable[Any]:
        if done >= total:
            return ()
        if done:
            return itertools.islice(iter(self.data), done, None)
        return self.data


def _start_method(loader: Any) -> str:
    """How ``loader`` starts its workers: its own multiprocessing context, else the default one
    (asked without fixing it, as ``get_start_method()`` would)."""
    context = getattr(loader, "multiprocessing_context", None)
    if isinstance(context, str):
        return context
    method = context.get_start_method(allow_none=True) if context is not None else None
    method = method or multiprocessing.get_start_method(allow_none=True)
    return str(method or multiprocessing.get_all_start_methods()[0])


def fork_hazard(loader: Any) -> str | None:
    """Why ``loader``'s workers may hang at their start, or None: they are forked from a process
    that joined a process group. Its threads (gloo's) may be inside the Python runtime at the
    moment of the fork; the worker then inherits a lock that nobody will release (CPython 3.11,
    torch 2.13, gloo: seen in torchresume's Lightning DDP kill test, one resumed run in ten on a
    loaded 2-core machine, the worker stuck in ``PyOS_AfterFork_Child``)."""
    import torch.distributed as dist
    workers = int(getattr(loader, "num_workers", 0) or 0)
    if workers == 0 or not (dist.is_available() and dist.is_initialized()) or _start_method(loader) != "fork":
        return None
    return (f"a DataLoader forks its {workers} workers from a process in a process group: "
            "a fork while one of the group's threads is inside Python can leave a worker hung at its "
            "start, and the training with it; make the DataLoader with "
            "multiprocessing_context='forkserver' (or 'spawn'), or call "
            "torch.multiprocessing.set_start_method('forkserver') first: it resumes exactly the same")


def check_feed_state(state: dict[str, Any], kind: str, batches: int | None) -> None:
    saved = state.get(FEED_KEY) if isinstance(state, dict) else None
    if saved != kind:
        what = saved or "torchresume's dataset"
        raise ValueError(f"the checkpoint's data position was saved from {what}, this run trains "
                         f"on {kind}; resume with the same kind of data (or start over with "
                         "resume='none')")
    if batches is not None and state.get("batches") not in (None, batches):
        raise ValueError(f"the checkpoint's data had {state['batches']} batches per epoch, this "
                         f"DataLoader has {batches}; resume with the same data and batch size")


def feed_for(data: Any) -> Feed:
    """The feed that resumes ``data`` exactly (or as well as it can be)."""
    from torch.utils.data import DataLoader
    stateful = hasattr(data, "state_dict") and hasattr(data, "load_state_dict")
    if isinstance(data, DataLoader):
        return StatefulFeed(data) if stateful else DataLoaderFeed(data)
    if stateful and hasattr(data, "sampler"):
        return PositionFeed(data)
    if stateful:
        return StatefulFeed(data)
    return ReplayFeed(data)


__all__ = ["DataLoaderFeed", "Feed", "PositionFeed", "ReplayFeed", "StatefulFeed", "feed_for", "fork_hazard"]
