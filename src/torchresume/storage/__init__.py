"""Where bytes live: a path or URL -> a Storage with atomic put/get/list/delete."""

from __future__ import annotations

from torchresume.storage.base import FileInfo, Storage
from torchresume.storage.local import LocalStorage

__all__ = ["FileInfo", "LocalStorage", "Storage", "resolve"]

_LOCAL = LocalStorage()


def resolve(url: str) -> tuple[Storage, str]:
    """The storage that holds ``url`` and the path within it."""
    url = str(url)
    if url.startswith("file://"):
        return _LOCAL, url[len("file://"):]
    if "://" in url:
        from torchresume.errors import UnsupportedFormatError
        scheme = url.split("://", 1)[0]
        raise UnsupportedFormatError(f"{url}: storage scheme {scheme!r} is not supported yet; "
                                     "use a local path")
    return _LOCAL, url
