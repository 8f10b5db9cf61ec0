"""Copy files and trees between local disk and object storage (moxing's copy_parallel).

Parallel, resumable (a file already at the destination with the same size and
checksum is skipped), with a byte progress bar on terminals. Files copied to
object storage are committed (marker last), so copied checkpoints are visible
to ls and resume. Failures are collected and named, never silently dropped.

Confined: a relative name (an object key below the source) that would leave the destination
(``..``, an absolute path) is refused, and a symbolic link below a local source or destination is
never followed (storage/confine.py): each is a failure naming it, nothing outside is read or written.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import BinaryIO

import xxhash

from torchresume.storage import confine, is_remote, resolve
from torchresume.storage.local import LocalStorage, open_regular

_CHUNK = 16 * 1024 * 1024


@dataclass
class CopyReport:
    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    bytes: int = 0


def _walk(url: str) -> dict[str, int]:
    """relative path -> size of every file under ``url`` (a single file maps "" -> size)."""
    storage, where = resolve(url)
    if not storage.exists(where):
        raise FileNotFoundError(f"{url}: no such file or directory")
    return storage.walk(where)


def _join(base: str, rel: str) -> str:
    if not rel:
        return base
    return base.rstrip("/") + "/" + rel if is_remote(base) else os.path.join(base, *rel.split("/"))


def _confined(base: str, rel: str) -> str:
    """``base``/``rel``, ``rel`` confined below ``base``; locally no component below it a link."""
    if not rel:
        return base
    storage, where = resolve(base)
    confine.member(storage, where, rel, base)
    return _join(base, rel)


def _is_dir(url: str) -> bool:
    storage, where = resolve(url)
    return bool(storage.isdir(where))


def read_bytes(url: str) -> bytes:
    storage, where = resolve(url)
    f, _ = storage.open_read(where)
    with f:
        return f.read()


def _copy_one(src: str, dst: str, follow: bool = True) -> tuple[bool, int]:
    """Copy one file unless ``dst`` already holds the same bytes; (copied, size).

    ``follow=False``: a local ``src`` that is a link (or not a regular file) is refused.
    """
    return resolve(dst)[0].retrying(f"copy of {src} to {dst}", lambda: _copy_attempt(src, dst, follow))


def _open_source(src: str, follow: bool) -> tuple[BinaryIO, int]:
    storage, where = resolve(src)
    if isinstance(storage, LocalStorage):
        return open_regular(where, src, follow=follow)
    return storage.open_read(where)


def _copy_attempt(src: str, dst: str, follow: bool = True) -> tuple[bool, int]:
    src_store, src_where = resolve(src)
    dst_store, dst_where = resolve(dst)
    if isinstance(src_store, LocalStorage):
        open_regular(src_where, src, follow=follow)[0].close()  # a link or a FIFO: refused before any read
    have = dst_store.digest(dst_where)
    if have is not None:
        want = src_store.digest(src_where) or _stream_digest(src, follow)  # no recorded digest: hash it once
        if have == want:
            return False, 0
    f, size = _open_source(src, follow)
    with f:
        writer = dst_store.open_writer(dst_where, read_only=False, size_hint=size)
        try:
            while chunk := f.read(_CHUNK):
                writer.write(chunk)
        except BaseException:
            writer.abort()
            raise
        writer.commit()
    return True, size


def _stream_digest(url: str, follow: bool) -> str:
    f, _ = _open_source(url, follow)
    h = xxhash.xxh3_64()
    with f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def copy(src: str, dst: str, *, workers: int = 8, progress: bool | None = None) -> CopyReport:
    """Copy a file or a tree from ``src`` to ``dst``; see the module docstring."""
    files = _walk(src)
    if list(files) == [""] and (dst.endswith("/") or _is_dir(dst)):
        dst = _join(dst, src.rstrip("/").rsplit("/", 1)[-1])  # a file into a directory keeps its name
    report = CopyReport()
    show = sys.stderr.isatty() if progress is None else progress
    bar = None
    if show:
        from tqdm import tqdm
        bar = tqdm(total=sum(files.values()), unit="B", unit_scale=True, desc="copy")

    def one(rel: str) -> tuple[str, bool, int]:
        return (rel, *_copy_one(_confined(src, rel), _confined(dst, rel), follow=not rel))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(one, rel): rel for rel in sorted(files)}
        for future in as_completed(futures):
            rel = futures[future]
            try:
                _, copied, size = future.result()
            except Exception as exc:
                report.failed[rel or src] = f"{type(exc).__name__}: {exc}"
                continue
            (report.copied if copied else report.skipped).append(rel or src)
            report.bytes += size if copied else 0
            if bar is not None:
                bar.update(files[rel])
    if bar is not None:
        bar.close()
    return report


__all__ = ["CopyReport", "copy", "read_bytes"]
