"""Copy files and trees between local disk and object storage (moxing's copy_parallel).

Parallel, resumable (a file already at the destination with the same size and
checksum is skipped), with a byte progress bar on terminals. Files copied to
object storage are committed (marker last), so copied checkpoints are visible
to ls and resume. Failures are collected and named, never silently dropped.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

import xxhash

from torchresume.storage import LocalStorage, is_remote, resolve
from torchresume.storage.remote import RemoteStorage, with_retries


@dataclass
class CopyReport:
    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    bytes: int = 0


def _walk(url: str) -> dict[str, int]:
    """relative path -> size of every file under ``url`` (a single file maps "" -> size)."""
    storage, where = resolve(url)
    if isinstance(storage, RemoteStorage):
        key = storage._key(where).rstrip("/")
        fs = storage.fs
        if with_retries(f"stat of {url}", lambda: fs.isfile(key)):
            return {"": int(fs.info(key)["size"])}
        found = with_retries(f"listing of {url}", lambda: fs.find(key, detail=True))
        return {posixpath.relpath(name, key): int(info["size"]) for name, info in found.items()
                if not _is_marker(posixpath.basename(name))}
    if os.path.isfile(where):
        return {"": os.path.getsize(where)}
    if not os.path.isdir(where):
        raise FileNotFoundError(f"{url}: no such file or directory")
    out = {}
    for root, _, files in os.walk(where):
        for name in files:
            if ".tmp-" in name:
                continue
            path = os.path.join(root, name)
            out[os.path.relpath(path, where).replace(os.sep, "/")] = os.path.getsize(path)
    return out


def _is_marker(name: str) -> bool:
    return name.startswith(".") and name.endswith(".commit")


def _join(base: str, rel: str) -> str:
    if not rel:
        return base
    return base.rstrip("/") + "/" + rel if is_remote(base) else os.path.join(base, *rel.split("/"))


def _is_dir(url: str) -> bool:
    storage, where = resolve(url)
    return bool(storage.isdir(where))


def read_bytes(url: str) -> bytes:
    storage, where = resolve(url)
    if isinstance(storage, RemoteStorage):
        return bytes(with_retries(f"download of {url}", lambda: storage.fs.cat_file(storage._key(where))))
    with open(where, "rb") as f:
        return f.read()


def _same(dst: str, data: bytes) -> bool:
    """Whether ``dst`` already holds ``data`` (size, then xxh3 via marker or md5 via ETag)."""
    storage, where = resolve(dst)
    if isinstance(storage, RemoteStorage):
        fs, key = storage.fs, storage._key(where)
        if not fs.exists(key) or int(fs.info(key)["size"]) != len(data):
            return False
        marker = storage.read_marker(where)
        if marker:
            return bool(marker.get("xxh3") == xxhash.xxh3_64_hexdigest(data))
        etag = str(fs.info(key).get("ETag", "")).strip('"')
        return etag == hashlib.md5(data).hexdigest()
    if not os.path.isfile(where) or os.path.getsize(where) != len(data):
        return False
    with open(where, "rb") as f:
        return xxhash.xxh3_64_hexdigest(f.read()) == xxhash.xxh3_64_hexdigest(data)


def _write(dst: str, data: bytes) -> None:
    storage, where = resolve(dst)
    if isinstance(storage, RemoteStorage):
        storage.write_atomic(where, [data])
    else:
        LocalStorage().write_atomic(where, [data], read_only=False)


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
        data = read_bytes(_join(src, rel))
        target = _join(dst, rel)
        if _same(target, data):
            return rel, False, len(data)
        _write(target, data)
        return rel, True, len(data)

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
