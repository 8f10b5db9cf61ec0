"""A sharded checkpoint read as one: the consolidated DCP state laid out as a single-process file.

``read_checkpoint`` of a sharded (torch.distributed) directory consolidates its
shards (``files/consolidate.py``) and hands the result here, so every
reader above the file layer (``load_checkpoint``, eval, infer, convert, diff,
a single-process resume) sees the tree a single-process training file of the
same run holds (docs/FORMAT.md, "A sharded checkpoint read as one"):

* the saved ``model`` entry's weights at the top level, under the network's own names;
* the saved ``optim`` (or ``optimizer``) entry as ``optimizer``, in torch's
  ``Optimizer.state_dict()`` layout: DCP keys state and ``param_groups[i].params`` by
  parameter name, a single-process file by position (0, 1, ... over the groups);
* rank 0's ``rng``, ``sampler``, ``callbacks``, ``scheduler``, ``scaler`` and ``extra`` (the
  shared run state; ``CheckpointManager``'s registered Statefuls under ``extra``) at the top
  level, a distributed sampler's ``global_batch_size`` as ``batch_size``
  (one process takes the whole global batch);
* whatever else each rank saved as its own state under ``rank_states.<rank>``
  (under torchrun: every other rank's RNG streams and its copy of the data position);
* any other saved entry under ``extra.<name>``, as a user's registered state is;
* the manifest's ``info`` without the directory's bookkeeping (``layout``,
  ``rank_parts``, ``dcp_metadata``), and its ``append``.

Nothing here touches torch.distributed: it maps trees.
"""

from __future__ import annotations

from typing import Any

from torchresume.errors import CorruptCheckpointError, StateMismatchError
from torchresume.format.reader import Checkpoint
from torchresume.state.train_state import RESERVED

FORMAT = "torchresume-sharded"
MODEL = "model"
OPTIMIZERS = ("optim", "optimizer")
SHARED = ("rng", "sampler", "callbacks", "scheduler", "scaler", "extra")  # rank 0's, where one process keeps them
RANK_STATES = "rank_states"
BOOKKEEPING = ("layout", "rank_parts", "dcp_metadata")  # facts about the directory, not the run


def checkpoint(path: str, state: dict[str, Any], info: dict[str, Any], doc: dict[str, Any]) -> Checkpoint:
    """The single-process view of consolidated ``state`` (with ``rank_states``) of manifest ``doc``."""
    saved = dict(state)
    ranks = saved.pop(RANK_STATES, None) or []
    tree = _weights(path, saved.pop(MODEL, None))
    for name, value in saved.items():
        if name in OPTIMIZERS and "optimizer" not in tree:
            tree["optimizer"] = optimizer_by_index(path, value)
        else:
            tree.setdefault("extra", {})[name] = value
    shared = _rank_parts(ranks)
    if isinstance(shared.get("extra"), dict):  # a user's registered state, beside any other saved entry
        shared["extra"] = {**tree.get("extra", {}), **shared["extra"]}
    tree.update(shared)
    meta = {"info": {k: v for k, v in info.items() if k not in BOOKKEEPING},
            "append": dict(doc.get("append") or {})}
    encrypted = any(bool(p.get("encrypted")) for p in doc.get("parts", []))
    kind = "train_state" if MODEL in state else "state"
    return Checkpoint(kind, tree, FORMAT, meta, encrypted)


def _weights(path: str, model: Any) -> dict[str, Any]:
    """The saved model's entries, to stand at the top level; none of them may look reserved."""
    if model is None:
        return {}
    if not isinstance(model, dict):
        raise CorruptCheckpointError(f"{path}: the saved 'model' entry is a {type(model).__name__}, "
                                     "not a state_dict; the checkpoint is damaged")
    clash = [k for k in model if str(k).split(".", 1)[0] in RESERVED]
    if clash:
        raise StateMismatchError(f"{path}: model state names {clash[:3]} start with a reserved word "
                                 f"{RESERVED}, so they cannot stand at the top level of one file; "
                                 "restore it with CheckpointManager(..., layout='sharded'), which reads the shards "
                                 "in place, or rename the submodule")
    return dict(model)


def optimizer_by_index(path: str, saved: Any) -> Any:
    """DCP's name-keyed optimizer state in torch's own layout (state and params by position).

    A state already keyed by position (or not an optimizer state at all) is returned as it is.
    """
    if not (isinstance(saved, dict) and isinstance(saved.get("state", {}), dict)
            and isinstance(saved.get("param_groups"), list)):
        return saved
    saved = {"state": {}, **saved}  # an optimizer without state (plain SGD) saves no tensor, so no "state"
    groups = saved["param_groups"]
    names = [p for g in groups if isinstance(g, dict) for p in g.get("params", [])]
    if not names or not all(isinstance(n, str) for n in names):
        return saved
    index = {n: i for i, n in enumerate(names)}
    stray = [n for n in saved["state"] if n not in index]
    if stray:
        raise CorruptCheckpointError(f"{path}: optimizer state for {stray[:3]}, which no param_group "
                                     "lists; the checkpoint is damaged")
    state = {index[n]: saved["state"][n] for n in names if n in saved["state"]}
    out_groups, start = [], 0
    for group in groups:
        count = len(group["params"])
        out_groups.append({**{k: v for k, v in group.items() if k != "params"},
                           "params": list(range(start, start + count))})
        start += count
    return {"state": state, "param_groups": out_groups}


def _rank_parts(ranks: list[Any]) -> dict[str, Any]:
    """Rank 0's shared run state at the top level; the rest of every rank's state under rank_states."""
    out: dict[str, Any] = {}
    per_rank: dict[int, Any] = {}
    for rank, own in enumerate(ranks):
        if rank == 0 and isinstance(own, dict):
            out.update({k: v for k, v in own.items() if k in SHARED and v is not None})
            own = {k: v for k, v in own.items() if k not in SHARED} or None
        if own is not None:
            per_rank[rank] = own
    if isinstance(out.get("sampler"), dict):
        out["sampler"] = one_process_sampler(out["sampler"])
    if per_rank:
        out[RANK_STATES] = per_rank
    return out


def one_process_sampler(state: dict[str, Any]) -> dict[str, Any]:
    """A distributed sampler's position as one process's: its global batch is the batch."""
    if "global_batch_size" not in state or "batch_size" in state:
        return state
    return {("batch_size" if k == "global_batch_size" else k): v for k, v in state.items()}


__all__ = ["FORMAT", "RANK_STATES", "checkpoint", "one_process_sampler", "optimizer_by_index"]
