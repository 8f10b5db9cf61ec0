"""A staged copy of the state whose copying may finish after ``save()`` returned (overlapped staging).

An asynchronous save must copy the live tensors before training changes them, but not all of
them change at once. The parameters and the optimizer state change only in ``optimizer.step``;
everything else a save holds may change sooner: buffers a forward pass writes (BatchNorm's
running statistics, DDP's buffer broadcast), whatever a user's module mutates in ``forward``.
So ``StagingBuffers.snapshot`` copies the second kind before it returns and only *records* the
copies of the first kind (tensors whose storage a guarded optimizer owns: ``deferred``):

- on CPU as pieces of at most ``PIECE_BYTES`` that the background thread copies (``copy_rest``)
  while the next forward and backward run;
- on CUDA as non-blocking copies into pinned host memory, queued at once on a side stream that
  first waits for the work already queued on the current stream, with an event at the end.

``gate()`` is what must run before the first change to a deferred tensor: the save slot calls
it from an ``optimizer.step`` pre-hook. On CPU it copies the pieces nobody has taken yet
(training thread and background thread share the work) and waits for the rest; on CUDA it makes
the current stream wait for the copy's event, which blocks no thread. ``copy_rest`` (the writer's
first step) returns once every copy is complete, so the write always sees the named step's state.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

PIECE_BYTES = 8 << 20  # a deferred CPU copy is cut into pieces this big, for two threads to share

Pair = tuple[torch.Tensor, torch.Tensor]  # (staging buffer, live tensor)


def storage_key(t: torch.Tensor) -> int:
    """What identifies a tensor's memory: the address of its storage (0 for a tensor without one)."""
    local = t.to_local() if hasattr(t, "to_local") else t  # a DTensor's shard on this rank
    try:
        return int(local.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError):  # no storage (meta, functional wrappers): never deferred
        return 0


def pieces(buffer: torch.Tensor, live: torch.Tensor) -> list[Pair]:
    """``live`` -> ``buffer`` as copies of at most PIECE_BYTES each (one copy if not contiguous)."""
    if not (live.is_contiguous() and buffer.is_contiguous()) or live.numel() == 0:
        return [(buffer, live)]
    step = max(1, PIECE_BYTES // live.element_size())
    flat_buffer, flat_live = buffer.view(-1), live.detach().reshape(-1)
    return [(flat_buffer[i:i + step], flat_live[i:i + step]) for i in range(0, live.numel(), step)]


class Snapshot:
    """The staged tree, and the deferred copies still to make before it is complete."""

    def __init__(self, tree: Any, later: list[Pair] | None = None,
                 device_done: dict[torch.device, Any] | None = None,
                 placeholders: frozenset[int] = frozenset()) -> None:
        self.tree = tree
        self.placeholders = placeholders  # data addresses of stand-ins for tensors not staged (staging.py)
        self._later = later or []
        self._device_done = device_done or {}
        self._next = 0
        self._copied = 0
        self._lock = threading.Lock()
        self._complete = threading.Event()
        self.error: BaseException | None = None
        if not self._later:
            self._complete.set()

    @property
    def deferred(self) -> bool:
        """Whether copies are left for after ``save()`` returned."""
        return bool(self._later) or bool(self._device_done)

    def copy_rest(self) -> None:
        """Make the deferred copies (the background thread); returns once every copy is complete."""
        self._take_pieces()
        self._complete.wait()
        for event in self._device_done.values():  # not run by the CPU-only test suite
            event.synchronize()
        if self.error is not None:
            raise self.error

    def gate(self) -> None:
        """Before a deferred tensor changes: copy the pieces left (CPU) and wait for the others; on
        CUDA the current stream waits for the side stream's copies, no thread blocks."""
        self._take_pieces()
        self._complete.wait()
        for device, event in self._device_done.items():  # not run by the CPU-only test suite
            torch.cuda.current_stream(device).wait_event(event)

    def _take_pieces(self) -> None:
        while True:
            with self._lock:
                if self._next >= len(self._later) or self.error is not None:
                    return
                index, self._next = self._next, self._next + 1
            buffer, live = self._later[index]
            try:
                buffer.copy_(live)
            except BaseException as exc:  # the write fails with it; nobody may wait for ever
                self.error = exc
                self._complete.set()
                raise
            with self._lock:
                self._copied += 1
                if self._copied == len(self._later):
                    self._complete.set()


_SIDE_STREAMS: dict[torch.device, Any] = {}


def copy_on_side_stream(device: torch.device, pairs: list[Pair]) -> Any:
    """Queue ``pairs`` as non-blocking copies on ``device``'s side stream after the work queued so
    far on its current stream; returns the event recorded after them. Not run by the CPU-only suite."""
    stream = _SIDE_STREAMS.get(device)
    if stream is None:
        stream = _SIDE_STREAMS[device] = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for buffer, live in pairs:
            buffer.copy_(live.detach(), non_blocking=True)
            live.record_stream(stream)  # the allocator may not reuse its memory before the copy ran
        done = torch.cuda.Event()
        done.record(stream)
    return done


__all__ = ["PIECE_BYTES", "Snapshot", "copy_on_side_stream", "pieces", "storage_key"]
