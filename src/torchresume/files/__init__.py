"""The file layer: one checkpoint's bytes in and out, below the engine (on state/, format/, storage/).

``encode`` lays a state tree out as bytes, ``write`` streams them to storage
and commits, ``read`` loads any supported checkpoint (a single file, a
directory with a manifest, a sharded one consolidated), ``describe`` reads only
what describes one and ``verify`` checks every byte. The public facade (api.py),
the manager, the catalog, inspection and distributed/ all stand on these
functions; this package never imports them. The sharded modules
(``sharded_reader``, ``dcp_metadata``, ``consolidate``) load
torch.distributed.checkpoint: nothing here imports them at import time.
"""

from torchresume.files.directory import MANIFEST, PartRecord, commit_directory, write_part
from torchresume.files.encoding import Description, encode_state, write_encoded
from torchresume.files.single import (
    CHECKPOINT_SUFFIXES,
    Verdict,
    describe,
    read_checkpoint,
    verify,
    write_checkpoint,
)

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "MANIFEST",
    "Description",
    "PartRecord",
    "Verdict",
    "commit_directory",
    "describe",
    "encode_state",
    "read_checkpoint",
    "verify",
    "write_checkpoint",
    "write_encoded",
    "write_part",
]
