"""Reusable host buffers that hold the snapshot an async save writes in the background.

An async save must copy the live state before training changes it. Copying into
freshly allocated memory each time pays the kernel's first-touch cost (page
faults and zeroing: about 20x slower than copying into memory already mapped,
see benchmarks/save_stall.py), so ``StagingBuffers`` allocates one buffer per
tensor once and reuses it while the tensors' shapes, dtypes and devices stay the
same; when they change the buffers are allocated again (logged at DEBUG).

CUDA tensors are staged into pinned host memory with non-blocking device-to-host
copies and one ``torch.cuda.synchronize()`` before ``stage`` returns, so the
snapshot is complete when the caller gets it (one synchronize per device used). That branch is small and is
not run by the CPU-only test suite.

The buffers are views of one page-aligned slab, laid out as the native file's
data region will be (largest element size first, then in tree order, packed):
the encoder then sees the tensors as one contiguous run of bytes
(format/native.py merges adjacent tensors), and the O_DIRECT writer sends that
run to the disk straight from the slab, with no copy (storage/direct.py).
If the encoder's order differs (a tree with numpy arrays among the tensors),
runs are shorter and the writer copies what it must; the bytes are the same.

``snapshot(tree, deferred, only)`` stages only the tensors at the positions ``only`` names and puts
placeholders (``Placeholders``: shape and dtype, no memory) for the rest: a sharded save under
DDP stages only the replicated tensors its rank writes (distributed/plan_cache.py says when).
``deferred`` leaves the copies of the tensors a guarded optimizer owns for after
the call returned (overlapped staging: snapshot.py says how and when they complete).

The buffers are reused, so a snapshot is only valid until the next ``stage``:
the caller (CheckpointManager, or ``save_checkpoint(..., async_save=True)`` with
one module-level set) keeps at most one background save in flight per set of
buffers and stages again only after it finished.

Two things are called staging (docs/ARCHITECTURE.md, "Names"): here, the copy of live tensors
into host memory that an async save writes from (``wait_staged``); in storage/staged.py, the
durable local copy of a checkpoint bound for object storage (``TORCHRESUME_STAGING``).
"""

from __future__ import annotations

import mmap
from typing import Any

import torch

from torchresume.log import log
from torchresume.snapshot import Pair, Snapshot, copy_on_side_stream, pieces, storage_key
from torchresume.state.tree import map_tensors

Layout = tuple[tuple[int, ...], torch.dtype, str]


def _layout(t: torch.Tensor) -> Layout:
    return tuple(t.shape), t.dtype, t.device.type


def is_stageable(t: torch.Tensor) -> bool:
    """Dense tensors only; others are copied plainly and the encoder says what is wrong with them."""
    return t.layout == torch.strided and not t.is_sparse


class StagingBuffers:
    """One host buffer per tensor of the state, kept across saves while the layout is unchanged."""

    def __init__(self) -> None:
        self._layout: list[Layout] = []
        self._buffers: list[torch.Tensor] = []
        self._pinned = False
        self._positions: list[int] = []  # each buffer's position among the dense tensors of the last snapshot
        self.allocations = 0  # how many times the buffers were (re)allocated

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._buffers)

    def stage(self, tree: Any) -> Any:
        """A copy of ``tree`` whose tensors live in the reused host buffers (complete on return)."""
        return self.snapshot(tree).tree

    def snapshot(self, tree: Any, deferred: frozenset[int] = frozenset(),
                 only: frozenset[int] | None = None) -> Snapshot:
        """Stage ``tree``; the copies of tensors whose ``storage_key`` is in ``deferred`` are only
        recorded (CPU) or queued on a side stream (CUDA), for ``Snapshot.copy_rest``/``gate``.

        ``only``: the positions (among the dense tensors, in tree order) to stage; every other dense
        tensor becomes a placeholder of its shape and dtype that holds no data (``placeholder``):
        a sharded save whose plan writes only this rank's share stages nothing else.
        """
        tensors: list[torch.Tensor] = []
        map_tensors(tree, tensors.append)
        dense = [t for t in tensors if is_stageable(t)]
        staged = [i for i in range(len(dense)) if only is None or i in only or dense[i].numel() == 0]
        layout = [_layout(dense[i]) for i in staged]
        pinned = any(t.device.type == "cuda" for t in dense)  # placeholders and buffers alike: one plan
        if layout != self._layout or pinned != self._pinned:
            self._allocate(layout, pinned)
        self._positions = staged
        later: list[Pair] = []
        on_device: dict[torch.device, list[Pair]] = {}
        now_devices: set[torch.device] = set()
        for buffer, t in zip(self._buffers, (dense[i] for i in staged), strict=True):
            live, on_cuda = t.detach(), t.device.type == "cuda"
            if deferred and storage_key(live) in deferred:
                if on_cuda:
                    on_device.setdefault(t.device, []).append((buffer, live))
                else:
                    later += pieces(buffer, live)
            else:
                buffer.copy_(live, non_blocking=on_cuda)
                if on_cuda:
                    now_devices.add(t.device)
        for device in now_devices:  # not run by the CPU-only test suite
            torch.cuda.synchronize(device)  # every stream of the device: these copies are complete
        device_done = {device: copy_on_side_stream(device, pairs) for device, pairs in on_device.items()}
        by_position = dict(zip(staged, self._buffers, strict=True))
        empty = Placeholders(pinned)
        positions = iter(range(len(dense)))

        def stand_in(t: torch.Tensor) -> torch.Tensor:
            if not is_stageable(t):
                return t.detach().to("cpu", copy=True)
            i = next(positions)
            return by_position[i] if i in by_position else empty.like(t)

        return Snapshot(map_tensors(tree, stand_in), later, device_done, placeholders=empty.keys())

    def positions_of(self, tensors: list[torch.Tensor]) -> frozenset[int]:
        """The positions (as ``snapshot``'s ``only`` counts them) of the staged buffers among ``tensors``."""
        at = {b.data_ptr(): i for i, b in zip(self._positions, self._buffers, strict=True) if b.numel()}
        return frozenset(at[t.data_ptr()] for t in tensors if t.numel() and t.data_ptr() in at)

    def _allocate(self, layout: list[Layout], pinned: bool) -> None:
        self.release()
        sizes = [_numel(shape) * dtype.itemsize for shape, dtype, _ in layout]
        order = sorted(range(len(layout)), key=lambda i: -layout[i][1].itemsize)  # the encoder's order
        offsets, total = [0] * len(layout), 0
        for i in order:
            offsets[i], total = total, total + sizes[i]
        slab = _slab(total, pinned=pinned)
        self._pinned = pinned
        self._buffers = [slab[offsets[i]:offsets[i] + sizes[i]].view(dtype).view(shape)
                         for i, (shape, dtype, _) in enumerate(layout)]
        self._layout = layout
        self.allocations += 1
        log.debug("staging buffers allocated for %d tensors (%d bytes; allocation %d)",
                  len(layout), self.nbytes, self.allocations)

    def release(self) -> None:
        """Free the buffers (the next ``stage`` allocates them again)."""
        self._buffers, self._layout, self._positions = [], [], []


class Placeholders:
    """Stand-ins for the tensors a snapshot does not stage: a zero-stride view of one element per
    dtype, so a planner sees the tensor's shape, dtype and layout (DCP plans it exactly as the
    staged buffer it replaces) while no memory is copied or held. ``keys()`` names them."""

    def __init__(self, pinned: bool) -> None:
        self.pinned = pinned
        self._bases: dict[torch.dtype, torch.Tensor] = {}

    def like(self, t: torch.Tensor) -> torch.Tensor:
        base = self._bases.get(t.dtype)
        if base is None:
            base = self._bases[t.dtype] = torch.zeros((), dtype=t.dtype, pin_memory=self.pinned)
        return base.expand(t.shape)

    def keys(self) -> frozenset[int]:
        """The data addresses every placeholder view has (its base's)."""
        return frozenset(b.data_ptr() for b in self._bases.values())


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _slab(nbytes: int, pinned: bool) -> torch.Tensor:
    """``nbytes`` of host memory as one uint8 tensor: pinned for CUDA, else a page-aligned mapping."""
    if pinned:  # cudaHostAlloc returns page-aligned memory
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    if nbytes == 0:
        return torch.empty(0, dtype=torch.uint8)
    return torch.frombuffer(mmap.mmap(-1, nbytes), dtype=torch.uint8)  # the tensor keeps the map alive


__all__ = ["Placeholders", "StagingBuffers", "is_stageable"]
