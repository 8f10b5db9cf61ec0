"""A crafted commit marker on object storage (review of issue 35): never read whole, never untyped.

The marker beside each object says it is committed (its size and xxh3). One that is huge, nests JSON
60k deep or is not JSON counts as uncommitted, with a warning naming it; the listing goes on. S3 is
moto's server in a thread of this process (tests/storage/conftest.py).
"""

from __future__ import annotations

import logging

import pytest

from tests.storage.conftest import bucket, s3_server  # noqa: F401  (fixtures)
from torchresume import storage
from torchresume.storage.remote import MAX_MARKER_BYTES, marker_path


@pytest.mark.parametrize(("marker", "says"), [
    (b"[" * 60_000, "the commit marker nests JSON too deeply; the file is damaged or hostile"),
    (b"{" + b" " * (4 * MAX_MARKER_BYTES) + b"}",
     f"more than {MAX_MARKER_BYTES} bytes, more than a commit marker holds"),
    (b"{]", "the commit marker is not valid JSON (Expecting property name enclosed in double quotes: "
            "line 1 column 2 (char 1)); the file is damaged or not a checkpoint"),
], ids=["deep", "huge", "not-json"])
def test_a_crafted_marker_counts_as_uncommitted(bucket, marker, says, caplog) -> None:  # noqa: F811
    store, where = storage.resolve(f"{bucket}/run")
    good, bad = f"{where}/net-1_1.ckpt", f"{where}/net-1_2.ckpt"
    store.write_atomic(good, [b"good"])
    store.write_atomic(bad, [b"crafted"])
    store.fs.pipe_file(store.key(marker_path(bad)), marker)  # type: ignore[attr-defined]
    with caplog.at_level(logging.WARNING, logger="torchresume"):
        assert [f.path for f in store.list(where)] == [good]
        assert store.digest(bad) is None
    marker_url = f"{bucket}/run/.net-1_2.ckpt.commit"
    warned = {r.getMessage() for r in caplog.records if r.name == "torchresume"}
    assert warned == {f"{marker_url}: {says}; {bad} counts as uncommitted"}
