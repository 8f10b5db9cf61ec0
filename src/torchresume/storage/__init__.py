"""Where bytes live: a path or URL -> a Storage with atomic put/get/list/delete.

Local paths and ``file://`` go to the local disk; ``s3://`` (and ``obs://``)
go to object storage through fsspec/s3fs. Options for remote stores come from
the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL)
and from ``configure(key=value, ...)`` (the CLI's ``--storage-option``).
"""

from __future__ import annotations

from typing import Any

from torchresume.errors import UnsupportedFormatError
from torchresume.storage.base import FileInfo, Storage
from torchresume.storage.local import LocalStorage

__all__ = ["FileInfo", "LocalStorage", "Storage", "configure", "endpoint", "is_remote", "resolve", "staging_dir"]

_LOCAL = LocalStorage()
_REMOTE_PROTOCOLS = ("s3", "s3a", "obs", "memory")
_options: dict[str, Any] = {}
_remotes: dict[str, Any] = {}


def configure(**options: Any) -> None:
    """Set fsspec options (endpoint_url, key, secret, ...) for remote stores."""
    _options.update(options)
    _remotes.clear()


def is_remote(url: str) -> bool:
    return "://" in str(url) and not str(url).startswith("file://")


def resolve(url: str) -> tuple[Storage, str]:
    """The storage that holds ``url`` and the path to hand it."""
    url = str(url)
    if url.startswith("file://"):
        return _LOCAL, url[len("file://"):]
    if "://" not in url:
        return _LOCAL, url
    protocol = url.split("://", 1)[0]
    if protocol not in _REMOTE_PROTOCOLS:
        raise UnsupportedFormatError(f"{url}: storage scheme {protocol!r} is not supported; use a "
                                     "local path, file://, s3:// or obs://")
    if protocol not in _remotes:
        from torchresume.storage.remote import RemoteStorage
        _remotes[protocol] = RemoteStorage(protocol, _options)
    return _remotes[protocol], url


def endpoint(url: str) -> str:
    """The server that holds remote ``url``: its configured endpoint, else the provider's default."""
    if not is_remote(url):
        return ""
    import os
    given = _options.get("endpoint_url") or (_options.get("client_kwargs") or {}).get("endpoint_url")
    given = given or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not given:
        return "default"
    from urllib.parse import urlsplit
    parts = urlsplit(str(given).strip())  # one server, one spelling: scheme and host lower case, no final /
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{parts.path.rstrip('/')}"


def staging_dir(url: str) -> str:
    """Local directory where checkpoints for remote ``url`` are written before upload.

    $TORCHRESUME_STAGING/<hash> or ~/.cache/torchresume/staging/<hash>, the hash of the
    endpoint and the URL: the same bucket name on another server is another directory.
    """
    import hashlib
    import os
    root = os.environ.get("TORCHRESUME_STAGING") or os.path.join(
        os.path.expanduser("~"), ".cache", "torchresume", "staging")
    key = f"{endpoint(str(url))}\n{url}" if is_remote(str(url)) else str(url)
    return os.path.join(root, hashlib.sha1(key.encode()).hexdigest()[:16])
