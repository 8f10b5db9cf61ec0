"""The seal of a directory checkpoint's manifest (plain or sharded): its digest, and its HMAC when encrypted.

Every manifest written since torchresume 0.3 carries ``digest``: ``xxh3`` (xxh3-64 of
``canonical``: the manifest without its digest, keys sorted, no spaces) and, when the
parts are encrypted, ``hmac_sha256`` (keyed from the encryption key) and ``key_check``
(tells a wrong key from a changed manifest). This module owns writing that seal
(``sealer``) and checking it (``check``: the digest, for every reader; ``authenticate``:
the HMAC, for a reader with the key). The xxh3 is unkeyed: it catches damage, not a
change by someone who recomputes it; only the HMAC of an encrypted checkpoint does.
A manifest written before the seal (version 1) is read with one warning line.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import xxhash

from torchresume.errors import CorruptCheckpointError, DecryptionError
from torchresume.log import log

DIGEST = "digest"
SEALED_VERSION = 2  # the manifest version (plain and sharded) since which every manifest is sealed
_HMAC_LABEL = b"torchresume sharded manifest v2"  # the label of the first sealed manifests (sharded): kept
_KEY_CHECK_LABEL = b"torchresume sharded key check v2"
_warned: set[str] = set()  # checkpoints already said to carry no digest (one line each per process)


def canonical(doc: dict[str, Any]) -> bytes:
    """The bytes the manifest digest covers: ``doc`` without its digest, keys sorted, no spaces."""
    body = {k: v for k, v in doc.items() if k != DIGEST}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _hmac_key(key: bytes) -> bytes:
    return hmac.new(key, _HMAC_LABEL, hashlib.sha256).digest()


def key_check(key: bytes) -> str:
    """16 hex digits that tell a wrong key from a changed manifest (a MAC of a constant, not the key)."""
    return hmac.new(key, _KEY_CHECK_LABEL, hashlib.sha256).hexdigest()[:16]


def sealer(enc_key: bytes | None) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """What the writer applies to a manifest before committing it: version 2 and its digest
    (xxh3-64 of ``canonical``; with ``enc_key`` also the HMAC-SHA256 and the key check)."""
    def seal(manifest: dict[str, Any]) -> dict[str, Any]:
        doc = {**manifest, "version": SEALED_VERSION}
        body = canonical(doc)
        digest = {"xxh3": xxhash.xxh3_64_hexdigest(body)}
        if enc_key is not None:
            digest["key_check"] = key_check(enc_key)
            digest["hmac_sha256"] = hmac.new(_hmac_key(enc_key), body, hashlib.sha256).hexdigest()
        return {**doc, DIGEST: digest}
    return seal


def check(path: str, doc: dict[str, Any]) -> None:
    """Raise CorruptCheckpointError unless manifest ``doc`` of ``path`` matches its digest; a version 1
    manifest (written before the seal) is said once, then read."""
    digest = doc.get(DIGEST)
    if digest is None and doc.get("version") == 1:
        if path not in _warned:
            _warned.add(path)
            log.warning("%s carries no manifest digest (written before torchresume 0.3): its step, epoch and "
                        "part list are not checked; save again to protect them", path)
        return
    if not isinstance(digest, dict) or not isinstance(digest.get("xxh3"), str):
        raise CorruptCheckpointError(f"{path}/manifest.json: version {doc.get('version')!r} without its digest; "
                                     "the manifest is damaged or was changed")
    if xxhash.xxh3_64_hexdigest(canonical(doc)) != digest["xxh3"]:
        raise CorruptCheckpointError(f"{path}/manifest.json: does not match its digest; the manifest "
                                     "(step, epoch, info or part list) is damaged or was changed")


def authenticate(path: str, doc: dict[str, Any], key: bytes | None) -> None:
    """With ``key``, check the HMAC of manifest ``doc`` (after ``check``).

    With a key, a sealed manifest must carry its HMAC whatever its parts' ``encrypted`` flags say:
    the flags are what the HMAC covers, so someone without the key could clear them to skip it.
    A wrong key is a DecryptionError (the key check); a manifest changed by someone without the key
    a CorruptCheckpointError. A version 1 manifest has none (said by ``check``)."""
    if key is None:
        return
    digest = doc.get(DIGEST)
    if digest is None and doc.get("version") == 1:
        return  # written before the HMAC; a sharded one's encrypted rank part says its version
    if not isinstance(digest, dict) or not isinstance(digest.get("hmac_sha256"), str):
        raise CorruptCheckpointError(f"{path}/manifest.json: carries no HMAC although a key was given; the "
                                     "manifest of an encrypted checkpoint was changed (or this checkpoint is "
                                     "not encrypted: read it without a key)")
    if digest.get("key_check") != key_check(key):
        raise DecryptionError(f"{path}: decryption failed: the key is wrong (it is not the one this "
                              "checkpoint was encrypted with)")
    expected = hmac.new(_hmac_key(key), canonical(doc), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, digest["hmac_sha256"]):
        raise CorruptCheckpointError(f"{path}/manifest.json: does not authenticate with the checkpoint's key; "
                                     "the manifest (step, epoch, info or part list) was changed")
