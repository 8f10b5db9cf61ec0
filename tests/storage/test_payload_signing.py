"""Uploads go UNSIGNED-PAYLOAD (no SHA-256 of every byte), unless the caller's botocore config says otherwise.

The header botocore sends is read from the request itself (a ``before-send`` hook on the
s3fs client), against moto and ``rclone serve s3``, and the bytes must come back intact.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from torchresume.storage.remote import UPLOAD_PART_BYTES, RemoteStorage, botocore_config

UNSIGNED = "UNSIGNED-PAYLOAD"


@pytest.fixture(params=["s3", "rclone"])
def any_bucket(request) -> str:
    """A fresh bucket on moto, then on rclone."""
    return str(request.getfixturevalue("bucket" if request.param == "s3" else "rclone_bucket"))


def record_payload_hashes(remote: RemoteStorage, bucket: str) -> dict[str, list[str]]:
    """x-amz-content-sha256 of every request ``remote`` sends from now on, by operation name."""
    remote.fs.exists(remote.key(bucket))  # s3fs makes its botocore client on the first call
    sent: dict[str, list[str]] = {}

    def hook(request: Any, event_name: str, **_: Any) -> None:
        value = request.headers["X-Amz-Content-SHA256"]  # bytes once the request is prepared
        sent.setdefault(event_name.rsplit(".", 1)[-1], []).append(
            value.decode() if isinstance(value, bytes) else value)
    remote.fs.s3.meta.events.register("before-send.s3", hook)
    return sent


def test_multipart_upload_is_not_hashed_and_arrives_intact(any_bucket: str) -> None:
    remote = RemoteStorage("s3")
    sent = record_payload_hashes(remote, any_bucket)
    data = bytes(range(256)) * ((UPLOAD_PART_BYTES + 12345) // 256)  # two parts
    path = any_bucket + "/big.bin"
    writer = remote.open_writer(path, size_hint=len(data))
    writer.write(data)
    writer.commit()  # completes the upload, then PUTs the commit marker
    assert len(sent["UploadPart"]) == 2
    assert set(sent["UploadPart"]) == {UNSIGNED}
    assert set(sent["PutObject"]) == {UNSIGNED}  # the commit marker
    handle, size = remote.open_read(path)
    with handle:
        assert size == len(data) and handle.read() == data
    assert remote.digest(path) is not None  # the marker (size + xxh3) matches the object


def test_callers_config_still_signs_the_payload(any_bucket: str) -> None:
    remote = RemoteStorage("s3", {"config_kwargs": {"s3": {"payload_signing_enabled": True}}})
    sent = record_payload_hashes(remote, any_bucket)
    body = b"signed, because the caller asked"
    remote.fs.pipe_file(remote.key(any_bucket + "/small.bin"), body)
    assert sent["PutObject"] == [hashlib.sha256(body).hexdigest()]
    assert remote.fs.cat_file(remote.key(any_bucket + "/small.bin")) == body


def test_defaults_merge_under_the_callers_config() -> None:
    given = {"s3": {"addressing_style": "path"}, "request_checksum_calculation": "when_supported"}
    assert botocore_config(given) == {
        "connect_timeout": 5, "retries": {"total_max_attempts": 1},  # ours is the one retry loop
        "request_checksum_calculation": "when_supported",
        "response_checksum_validation": "when_required",
        "s3": {"payload_signing_enabled": False, "addressing_style": "path"}}
    assert botocore_config(None)["s3"] == {"payload_signing_enabled": False}
    assert given["s3"] == {"addressing_style": "path"}  # the caller's dicts are not modified


def test_the_cli_option_signs_the_payload(any_bucket: str) -> None:
    """``--storage-option config_kwargs.s3.payload_signing_enabled=true`` reaches botocore."""
    from torchresume.cli.main import parse_storage_options
    remote = RemoteStorage("s3", parse_storage_options(["config_kwargs.s3.payload_signing_enabled=true"]))
    sent = record_payload_hashes(remote, any_bucket)
    body = b"signed, because the command line asked"
    remote.fs.pipe_file(remote.key(any_bucket + "/cli.bin"), body)
    assert sent["PutObject"] == [hashlib.sha256(body).hexdigest()]
