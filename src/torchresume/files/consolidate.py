"""One full state from a sharded checkpoint, without a process group: what ``read_checkpoint`` shows.

DCP's own empty-state planner rebuilds every logical tensor at its global size
from the metadata; the part reader fills it from the shards (checksums checked),
without a process group. The result is the nested state that was saved, plus
``rank_states`` (every saving rank's own state) when any rank saved one.
``files/single.py`` calls ``consolidate`` (lazily) when it reads a sharded
checkpoint, and ``files/sharded_as_one.py`` lays the result out as a
single-process file: every reader (load_checkpoint, eval, convert, diff, a
single-process resume) goes through that one path.
"""

from __future__ import annotations

from typing import Any

from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

from torchresume.files.sharded_reader import PartReader, part_header, read_rank_state, restore_error

RANK_STATES = "rank_states"


def rank_states(path: str, doc: dict[str, Any], dec_key: bytes | None = None, *,
                verify: bool = True) -> list[Any]:
    """Every saving rank's ``rank_state``, index = rank."""
    return [read_rank_state(path, doc, rank, dec_key=dec_key, verify=verify)
            for rank in range(len(doc["info"]["rank_parts"]))]


def consolidate(path: str, dec_key: bytes | None = None, *,
                verify: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """The full saved state of sharded checkpoint ``path`` and its manifest info (parts saved with
    ``enc_key`` read with ``dec_key``; a missing or wrong key is a DecryptionError).

    The manifest is checked (names, digest; with the key its HMAC) and the metadata against it (every
    chunk's part committed, every tensor covered exactly) before any chunk is read; ``verify`` checks
    every tensor's checksum as it is read and every unencrypted part's header against the manifest.
    """
    reader = PartReader(path, dec_key=dec_key, verify=verify)
    reader.prepare()  # the manifest (digest, names, HMAC with the key) and the metadata, checked
    doc = reader.doc
    state: dict[str, Any] = {}
    try:
        _load_state_dict(state, storage_reader=reader, planner=_EmptyStateDictLoadPlanner(), no_dist=True)
    except CheckpointException as exc:
        raise restore_error(path, exc) from None
    if verify:  # chunks were read by their byte ranges: the rest of each header is checked too
        for part in doc["parts"]:
            if not part.get("encrypted"):
                part_header(path, part)
    states = rank_states(path, doc, dec_key, verify=verify)
    if any(s is not None for s in states):
        state[RANK_STATES] = states
    return state, dict(doc["info"])
