"""CheckpointManager: naming, saving full training state, listing, newest valid, retention.

It keeps the books; the format module lays out bytes and storage writes
them. A training state is one checkpoint: the model's state_dict at the top
level (so the file loads into a bare network), plus ``optimizer``,
``scheduler``, ``scaler``, ``sampler``, ``rng``, ``callbacks`` and ``extra``
sub-trees, and an info block (epoch, step, global step, metrics, run config).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from torchresume import catalog
from torchresume.api import encode_state, read_checkpoint, write_encoded
from torchresume.async_writer import AsyncWriter
from torchresume.catalog import Entry
from torchresume.errors import (
    CorruptCheckpointError,
    DivergedRunError,
    SaveError,
    StateMismatchError,
    TorchResumeError,
)
from torchresume.format import crypto
from torchresume.format.reader import Checkpoint
from torchresume.retention import KeepLast, RetentionPolicy
from torchresume.state import rng
from torchresume.state.stateful import Stateful
from torchresume.state.train_state import RESERVED
from torchresume.state.tree import map_tensors
from torchresume.storage import is_remote, resolve, staging_dir
from torchresume.storage.local import LocalStorage, clean_stale_temps


def unique_prefix(directory: str, prefix: str) -> str:
    """MindSpore's rule: a fresh run into a directory that has ``prefix`` files gets ``prefix_N``."""
    storage, where = resolve(directory)
    taken = -1
    for info in storage.list(where):
        parsed = catalog.parse_name(info.name)
        name_prefix = parsed[0] if parsed else info.name.rsplit("-graph.json", 1)[0]
        if name_prefix == prefix:
            taken = max(taken, 0)
        elif name_prefix.startswith(prefix + "_") and name_prefix[len(prefix) + 1:].isdigit():
            taken = max(taken, int(name_prefix[len(prefix) + 1:]))
    return prefix if taken < 0 else f"{prefix}_{taken + 1}"


def prune(directory: str, keep: int) -> list[str]:
    """Keep the newest ``keep`` checkpoints of every prefix in ``directory``; returns what was deleted."""
    storage, _ = resolve(directory)
    deleted: list[str] = []
    entries = catalog.list_checkpoints(directory, verify=False)
    for prefix in {e.prefix for e in entries if e.prefix is not None}:
        family = sorted((e for e in entries if e.prefix == prefix and not e.breakpoint),
                        key=lambda e: e.order_key())
        for e in family[:-keep]:
            storage.delete(e.path)
            deleted.append(e.path)
    return deleted


def inspection_size(path: str) -> str:
    from torchresume.inspection import human_bytes
    return human_bytes(os.path.getsize(path))


def _write_or_say_why(encoded: Any, path: str, enc_key: bytes | None) -> None:
    """Write a checkpoint; a failure names the checkpoint and the cause, not a temporary."""
    try:
        write_encoded(encoded, path, enc_key)
    except TorchResumeError:
        raise
    except OSError as exc:
        cause = exc.strerror or str(exc)
        code = f" (errno {exc.errno})" if exc.errno else ""
        error = SaveError(f"cannot save checkpoint {path}: {cause}{code}")
        error.errno = exc.errno
        raise error from exc


def tree_finite(tree: Any) -> bool:
    """Whether every floating tensor of a checkpoint's state (RNG aside) is finite."""
    if not isinstance(tree, dict):
        return True
    ok = True

    def check(t: torch.Tensor) -> torch.Tensor:
        nonlocal ok
        if ok and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            ok = False
        return t
    map_tensors({k: v for k, v in tree.items() if k != "rng"}, check)
    return ok


def snapshot(tree: Any) -> Any:
    """A CPU copy of every tensor: what a background writer may use while training goes on."""
    return map_tensors(tree, lambda t: t.detach().to("cpu", copy=True))


class CheckpointManager:
    """Saves and restores full training state in ``directory`` under one prefix."""

    def __init__(self, directory: str, *, model: nn.Module | None = None,
                 optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                 sampler: Stateful | None = None, scaler: Any = None,
                 extra: dict[str, Stateful] | None = None, prefix: str = "ckpt",
                 keep: Sequence[RetentionPolicy] | int | None = 5, async_save: bool = False,
                 enc_key: bytes | None = None, enc_mode: str = "AES-GCM",
                 saved_network: nn.Module | None = None) -> None:
        self.directory = str(directory)
        self.storage, self._where = resolve(self.directory)
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.sampler, self.scaler, self.extra = sampler, scaler, dict(extra or {})
        self.saved_network = saved_network
        self.prefix = prefix
        self.policies: list[RetentionPolicy] = (
            [KeepLast(keep)] if isinstance(keep, int) else list(keep or []))
        self.enc_key = crypto.check_key(enc_key, enc_mode, "enc_key") if enc_key else None
        self._writer = AsyncWriter() if async_save else None
        self.last_saved: str | None = None
        # Remote directories: write locally (durably) first, upload in the background.
        self.staging = staging_dir(self.directory) if is_remote(self.directory) else None
        self._uploader = AsyncWriter("torchresume-upload") if self.staging else None
        self._last_uploaded: str | None = None
        self.verbose = False  # one line per saved checkpoint (ModelCheckpoint turns it on)
        # Completed steps of the run: restored from a checkpoint, counted by Guard.step_done.
        self.global_step = 0
        for local_dir in (self._where if isinstance(self.storage, LocalStorage) else None, self.staging):
            if local_dir:
                clean_stale_temps(local_dir)

    # -- saving ---------------------------------------------------------------------------
    def file_name(self, epoch: int, step: int, breakpoint: bool = False) -> str:
        return f"{self.prefix}-{epoch}_{step}{'_breakpoint' if breakpoint else ''}.ckpt"

    def capture(self, *, callbacks: dict[str, Any] | None = None,
                rng_state: dict[str, Any] | None = None,
                sampler_state: dict[str, Any] | None = None) -> dict[str, Any]:
        """The training state as one tree (tensors still shared with the live objects)."""
        if self.saved_network is not None:
            return dict(self.saved_network.state_dict())
        tree: dict[str, Any] = dict(self.model.state_dict()) if self.model is not None else {}
        clash = [k for k in tree if k.split(".", 1)[0] in RESERVED]
        if clash:
            raise ValueError(f"model state names {clash[:3]} start with a reserved word "
                             f"{RESERVED}; rename the submodule")
        parts: dict[str, Any] = {
            "optimizer": self.optimizer, "scheduler": self.scheduler, "scaler": self.scaler}
        for key, obj in parts.items():
            if obj is not None:
                tree[key] = obj.state_dict()
        if sampler_state is not None or self.sampler is not None:
            tree["sampler"] = sampler_state if sampler_state is not None else self.sampler.state_dict()  # type: ignore[union-attr]
        tree["rng"] = rng_state if rng_state is not None else rng.capture()
        if callbacks:
            tree["callbacks"] = callbacks
        if self.extra:
            tree["extra"] = {k: v.state_dict() for k, v in self.extra.items()}
        return tree

    def save(self, epoch: int, step: int, global_step: int | None = None, *,
             breakpoint: bool = False, info: dict[str, Any] | None = None,
             append: dict[str, Any] | None = None, callbacks: dict[str, Any] | None = None,
             rng_state: dict[str, Any] | None = None,
             sampler_state: dict[str, Any] | None = None) -> str:
        """Write a checkpoint of the current state; retention runs after it is committed."""
        for writer in (self._writer, self._uploader):
            if writer is not None:
                writer.raise_if_failed()
        path = self.storage.join(self.directory, self.file_name(epoch, step, breakpoint))
        tree = self.capture(callbacks=callbacks, rng_state=rng_state, sampler_state=sampler_state)
        if global_step is None:  # a guarded loop counts them; else the step is all we know
            global_step = self.global_step or step
        full_info = {"epoch": epoch, "step": step, "global_step": global_step,
                     "prefix": self.prefix, "breakpoint": breakpoint, "time": time.time(),
                     **(info or {})}
        kind = "model" if self.saved_network is not None else "train_state"
        if self._writer is None:
            self._commit(kind, tree, full_info, append, path)
        else:  # snapshot now; the live tensors keep changing while the writer works
            copy = snapshot(tree)
            self._writer.submit(lambda: self._commit(kind, copy, full_info, append, path), path)
        self.last_saved = path
        return path

    def _commit(self, kind: str, tree: Any, info: dict[str, Any], append: dict[str, Any] | None,
                path: str) -> None:
        start = time.perf_counter()
        encoded = encode_state(kind, tree, info=info, append=append)
        if self.staging is None or self._uploader is None:
            _write_or_say_why(encoded, path, self.enc_key)
            self._report("saved", path, start)
            self.apply_retention(protect=path)
            return
        local = os.path.join(self.staging, path.rsplit("/", 1)[-1])
        _write_or_say_why(encoded, local, self.enc_key)
        self._report("saved", local, start, f"; uploading to {path}")
        self._uploader.submit(lambda: self._upload(local, path), path)

    def _report(self, what: str, path: str, start: float, tail: str = "") -> None:
        """One line per checkpoint (when ``verbose``): its path, size and how long it took."""
        if not self.verbose:
            return
        try:
            size = inspection_size(path)
        except OSError:
            size = "?"
        print(f"torchresume: {what} {path} ({size}, {time.perf_counter() - start:.2f} s){tail}",
              flush=True)

    def _upload(self, local: str, path: str) -> None:
        start = time.perf_counter()
        self.storage.upload_file(local, path)  # type: ignore[attr-defined]
        if self.verbose:
            from torchresume.inspection import human_bytes
            print(f"torchresume: uploaded {path} ({human_bytes(os.path.getsize(local))}, "
                  f"{time.perf_counter() - start:.2f} s)", flush=True)
        self.apply_retention(protect=path)
        # Only files already uploaded may go; the newest uploaded one stays as a local cache.
        if self._last_uploaded and self._last_uploaded != local and os.path.exists(self._last_uploaded):
            os.unlink(self._last_uploaded)
        self._last_uploaded = local

    def apply_retention(self, protect: str | None = None) -> list[str]:
        """Delete this prefix's checkpoints that no policy keeps; returns what was deleted."""
        if not self.policies:
            return []
        entries = [e for e in self.checkpoints() if not e.breakpoint]
        entries.sort(key=lambda e: e.order_key())
        keep = set().union(*(p.keep(entries) for p in self.policies))
        if entries:
            keep.add(entries[-1].path)  # never the newest
        if protect:
            keep.add(protect)
        doomed = [e.path for e in entries if e.path not in keep]
        for path in doomed:
            self.storage.delete(path)
        return doomed

    def wait(self, timeout: float | None = None) -> None:
        """Wait for background saves and uploads; re-raise the first failure.

        With ``timeout``, raises TimeoutError if uploads are still running then.
        """
        if self._writer is not None:
            self._writer.wait(timeout)
        if self._uploader is not None:
            self._uploader.wait(timeout)

    def close(self) -> None:
        for writer in (self._writer, self._uploader):
            if writer is not None:
                writer.close()

    # -- finding --------------------------------------------------------------------------
    def checkpoints(self, *, all_prefixes: bool = False, verify: bool = False) -> list[Entry]:
        """This prefix's (or every) checkpoint in the directory, newest first."""
        return catalog.list_checkpoints(self.directory, verify=verify,
                                        prefix=None if all_prefixes else self.prefix)

    def _resume_candidates(self) -> list[Entry]:
        """Every checkpoint in the directory and, for a remote one, staged files not uploaded yet."""
        entries = self.checkpoints(all_prefixes=True)
        if self.staging:
            uploaded = {e.name for e in entries}
            entries += [e for e in catalog.list_checkpoints(self.staging, verify=False)
                        if e.name not in uploaded]
            entries.sort(key=Entry.order_key, reverse=True)
        return entries

    def upload_pending(self) -> list[str]:
        """Queue uploads of staged checkpoints the remote lacks (a kill came before their upload)."""
        if not self.staging or self._uploader is None:
            return []
        uploaded = {e.name for e in self.checkpoints(all_prefixes=True)}
        queued = []
        for entry in catalog.list_checkpoints(self.staging, verify=True):
            if entry.name not in uploaded and entry.valid:
                remote = self.storage.join(self.directory, entry.name)
                print(f"torchresume: uploading {remote}, saved locally before the last run stopped",
                      flush=True)
                self._uploader.submit(lambda e=entry, r=remote: self._upload(e.path, r), remote)  # type: ignore[misc]
                queued.append(remote)
        return queued

    def newest_readable(self, run: str | None = None, *,
                        require_finite: bool = False) -> tuple[Entry, Checkpoint] | None:
        """The newest resumable checkpoint, read and verified once; bad ones are skipped and named.

        ``run``: only that run's checkpoints (catalog.select_run: never another run's).
        ``require_finite``: skip, saying so, checkpoints whose weights hold NaN or Inf; if
        every one does, raise DivergedRunError.
        """
        candidates = self._resume_candidates()
        if run is not None:
            candidates = catalog.select_run(candidates, run, self.directory)
        diverged: list[str] = []
        for entry in candidates:
            if entry.prefix is not None and entry.prefix.endswith("-best"):
                continue  # best-model copies are for evaluation, not for resuming
            try:
                if not entry.valid:
                    raise CorruptCheckpointError(entry.reason)
                ckpt = read_checkpoint(entry.path, dec_key=self.enc_key)
            except (TorchResumeError, OSError) as exc:
                print(f"torchresume: skipping invalid checkpoint {exc}", file=sys.stderr)
                continue
            if require_finite and not tree_finite(ckpt.tree):
                print(f"torchresume: skipping {entry.path}: its weights are not finite (NaN or Inf: "
                      "the run diverged there)", file=sys.stderr, flush=True)
                diverged.append(entry.name)
                continue
            return entry, ckpt
        if diverged:
            raise DivergedRunError(
                f"{self.directory}: every checkpoint of the run ({', '.join(diverged)}) has non-finite "
                "weights (the run diverged); start over with --resume none (resume='none'), "
                "e.g. at a lower learning rate")
        return None

    # -- restoring ------------------------------------------------------------------------
    def restore(self, path: str, *, callbacks: dict[str, Stateful] | None = None,
                restore_rng: bool = True, ckpt: Checkpoint | None = None) -> dict[str, Any]:
        """Load everything ``path`` holds (or the already read ``ckpt``) into the live objects.

        Returns the file's info. A weights-only file restores the model and says what it lacked.
        """
        if ckpt is None:
            ckpt = read_checkpoint(path, dec_key=self.enc_key)
        tree = ckpt.tree if isinstance(ckpt.tree, dict) else {}
        model_state = {k: v for k, v in tree.items() if k.split(".", 1)[0] not in RESERVED}
        if self.model is not None:
            missing, unexpected = self.model.load_state_dict(model_state, strict=False)
            if missing or unexpected:
                raise StateMismatchError(f"{path}: does not fit the model: missing "
                                         f"{list(missing)[:5]}, unexpected {list(unexpected)[:5]}")
        lacking = []
        for key in ("optimizer", "scheduler", "scaler", "sampler"):
            obj = getattr(self, key)
            if obj is None:
                continue
            if key in tree:
                obj.load_state_dict(tree[key])
            else:
                lacking.append(key)
        if restore_rng and "rng" in tree:
            rng.restore(tree["rng"])
        elif restore_rng:
            lacking.append("rng")
        for name, obj in (callbacks or {}).items():
            state = tree.get("callbacks", {}).get(name)
            if state is not None:
                obj.load_state_dict(state)
        for name, obj in self.extra.items():
            if name in tree.get("extra", {}):
                obj.load_state_dict(tree["extra"][name])
            else:
                lacking.append(f"extra.{name}")
        info = dict(ckpt.info)
        info["lacking"] = lacking
        if isinstance(info.get("global_step"), int):
            self.global_step = info["global_step"]
        if lacking:
            print(f"torchresume: {path} holds no {', '.join(lacking)} state (weights-only "
                  "checkpoint?); those start fresh", file=sys.stderr)
        return info

    def restore_latest(self, *, callbacks: dict[str, Stateful] | None = None) -> dict[str, Any] | None:
        """Restore the newest valid checkpoint in the directory; None if there is none."""
        self.upload_pending()
        found = self.newest_readable()
        if found is None:
            return None
        entry, ckpt = found
        info = self.restore(entry.path, callbacks=callbacks, ckpt=ckpt)
        info["path"] = entry.path
        return info

    # -- custom loops ---------------------------------------------------------------------
    @contextmanager
    def guard(self, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
              ) -> Iterator[Guard]:
        """Save a breakpoint when the body raises, or a checkpoint when a stop signal arrives."""
        g = Guard(self, signals)
        g.install()
        try:
            yield g
        except BaseException as exc:
            if not isinstance(exc, SystemExit) and g.position is not None:
                epoch, step, global_step = g.position
                path = self.save(epoch, step, global_step, breakpoint=True)
                self.wait()
                print(f"torchresume: {type(exc).__name__} at epoch {epoch} step {step}; "
                      f"breakpoint saved to {path}", file=sys.stderr)
            raise
        finally:
            g.uninstall()
            self.wait()


class Guard:
    """Tracks the last completed step of a custom loop and turns stop signals into saves."""

    def __init__(self, manager: CheckpointManager, signals: Sequence[int]) -> None:
        self.manager, self.signals = manager, tuple(signals)
        self.position: tuple[int, int, int] | None = None
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C aborts at once
        self.received = signum

    def step_done(self, epoch: int, step: int, global_step: int | None = None) -> None:
        """Call after each completed step; saves and exits (128 + signal) if asked to stop.

        Without ``global_step``, the run's steps are counted from the restored checkpoint's.
        """
        self.manager.global_step = global_step if global_step is not None else self.manager.global_step + 1
        self.position = (epoch, step, self.manager.global_step)
        if self.received is not None:
            path = self.manager.save(epoch, step, self.position[2])
            self.manager.wait()
            print(f"torchresume: signal {self.received}: saved {path}, exiting", file=sys.stderr)
            raise SystemExit(128 + self.received)


__all__ = ["CheckpointManager", "Guard", "unique_prefix"]
