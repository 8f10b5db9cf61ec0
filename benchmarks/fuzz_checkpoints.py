"""Fuzz every checkpoint layout with hostile mutations; each case is read by a child process.

Usage (from the repository root; not part of the test command, it takes a while):

    nice .venv/bin/python -m benchmarks.fuzz_checkpoints --mutations 3000

Kinds: ``single`` (a native file), ``encrypted`` (the same, AES-GCM), ``directory`` (two native
parts + manifest.json), ``sharded`` (a one-process ShardedStore save:
manifest.json, dcp_metadata.json, parts) and ``mindspore`` (a protobuf .ckpt with its CRC
footer). Mutations: bytes (bit flips, truncation, splices, zeroed runs, length prefixes), JSON
values (types, huge and negative numbers, deep nesting, long strings, missing keys), names (``..``,
absolute, int), declared sizes and offsets, the MindSpore wire fields (varints, dims, types,
names), links (to /dev/zero, to a copy outside, dangling) and file kinds (FIFO, directory).
"Forged" mutations recompute the checksums the change broke (xxh3 and CRC32 are unkeyed, so an
attacker can), to reach the parsers behind them.

Each case is loaded (``files.read_checkpoint``), verified (``files.verify``) and inspected
(``files.describe``) by a worker process (``--workers``, default 1), each step within
``--timeout`` seconds. Counted as findings: an error that is not a TorchResumeError (untyped),
a step over the timeout (the worker is killed), a worker's peak RSS growing more than 10x the
checkpoint's size + 200 MB, a silent load (a mutation that was not forged, of a checksummed
layout, loaded with a value that differs from the original), a verify that says valid while
the load failed (or the reverse), and a load that succeeded through a name or link that
leads outside the checkpoint. A finding's case is kept under ``--keep`` with a reproducer line.
Exit status 1 when there is any finding.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import select
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("single", "encrypted", "directory", "sharded", "mindspore")
KEY = bytes(range(32))
STEPS = ("load", "verify", "inspect")
RSS_SLACK = 200 * 2**20
RSS_GUARD = 3 * 2**30  # the parent kills a worker above this resident size, whatever the case


# -- seeds --------------------------------------------------------------------------------------

def _state() -> dict[str, Any]:
    import torch
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(4, 4)).sum().backward()
    opt.step()
    return {"model": net.state_dict(), "optimizer": opt.state_dict(), "epoch": 3,
            "note": "seed", "ids": torch.arange(5, dtype=torch.int64), "mask": torch.tensor([True, False])}


def make_seeds(where: Path, kinds: list[str]) -> dict[str, Path]:
    """One valid checkpoint of each of ``kinds`` under ``where`` (each in its own folder)."""
    import torchresume as tr
    from torchresume.files import commit_directory, write_part
    state = _state()
    seeds: dict[str, Path] = {}
    for kind in kinds:
        (where / kind).mkdir(parents=True, exist_ok=True)
    if "single" in kinds:
        seeds["single"] = where / "single" / "ckpt.ckpt"
        tr.save_checkpoint(state, str(seeds["single"]), append_dict={"lr": 0.1})
    if "encrypted" in kinds:
        seeds["encrypted"] = where / "encrypted" / "ckpt.ckpt"
        tr.save_checkpoint(state, str(seeds["encrypted"]), enc_key=KEY)
    if "directory" in kinds:
        seeds["directory"] = where / "directory" / "ckpt-1_2.ckpt"
        seeds["directory"].mkdir()
        parts = [write_part(str(seeds["directory"]), "model", "state", {"model": state["model"]}),
                 write_part(str(seeds["directory"]), "rest", "state",
                            {k: v for k, v in state.items() if k != "model"})]
        commit_directory(str(seeds["directory"]), parts, info={"epoch": 1, "step": 2}, append={"lr": 0.1})
    if "sharded" in kinds:  # one process, no process group: the layout torchrun writes, one rank of it
        from torchresume.distributed import ShardedStore
        mgr = ShardedStore(str(where / "sharded"), prefix="ckpt", keep=1)
        seeds["sharded"] = Path(mgr.save({"model": state["model"], "optimizer": state["optimizer"]},
                                         epoch=1, step=6, rank_state={"seen": 32}) or "")
        mgr.close()
    if "mindspore" in kinds:
        seeds["mindspore"] = where / "mindspore" / "net.ckpt"
        tr.save_checkpoint(_mindspore_entries(state), str(seeds["mindspore"]), format="ckpt", crc_check=True)
    return seeds


def _mindspore_entries(state: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {f"net.{k}": v for k, v in state["model"].items() if v.numel()}
    out.update({"global_step": 12, "learning_rate": 0.1, "note": "seed", "flag": True})
    return out


# -- cases --------------------------------------------------------------------------------------

@dataclass
class Case:
    """One mutated checkpoint: ``path`` inside ``root`` (which may also hold an ``outside`` folder)."""

    kind: str
    index: int
    root: Path
    path: Path
    mutation: str = ""
    forged: bool = False  # checksums recomputed: a changed value that loads is no finding
    outside: bool = False  # the mutation points a name or link outside the checkpoint
    noop: bool = False


def _files_of(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and not p.is_symlink())
    return [path]


def _size_of(path: Path) -> int:
    total = 0
    for p in [path, *(path.rglob("*") if path.is_dir() and not path.is_symlink() else [])]:
        with contextlib.suppress(OSError):
            st = p.lstat()
            if not p.is_dir() and p.is_file() and not p.is_symlink():
                total += st.st_size
    return total


# JSON values a mutation puts in place of another. "RAW:" values are written as raw JSON text.
def _json_palette(rng: random.Random) -> Any:
    depth = rng.choice([3, 50, 900, 5000, 100_000])
    choices: list[Any] = [
        None, True, False, 0, -1, -(2**63), 2**63, 2**64 + 7, 2**31, 1.5, -0.0, "", "x", "..", "../../outside/x",
        "/etc/passwd", "/dev/zero", "F32", "U8", "I64", "BOOL", [], {}, [0], [0, 2**63], [2**62, 2**62],
        [-1, 4], [1] * 70, {"a": 1}, "x" * rng.choice([100, 100_000]),
        "RAW:" + "[" * depth + "]" * depth, "RAW:" + "[" * depth,
        "RAW:" + '{"a":' * min(depth, 5000) + "1" + "}" * min(depth, 5000),
        "RAW:1" + "0" * rng.choice([20, 400, 5000]), "RAW:-1" + "0" * rng.choice([20, 5000]), "RAW:1e999",
        "RAW:-1e999", "RAW:NaN", "RAW:Infinity", "RAW:1e-999", "RAW:\"\\ud800\"",
        "RAW:[" + ",".join(["0"] * 10000) + "]",
    ]
    return rng.choice(choices)


def _dump(doc: Any) -> str:
    """JSON text of ``doc`` with its "RAW:" strings written as they are (huge numbers, deep nesting)."""
    raws: list[str] = []

    def swap(node: Any) -> Any:
        if isinstance(node, str) and node.startswith("RAW:"):
            raws.append(node[4:])
            return f"@@RAW{len(raws) - 1}@@"
        if isinstance(node, dict):
            return {k: swap(v) for k, v in node.items()}
        if isinstance(node, list):
            return [swap(v) for v in node]
        return node

    text = json.dumps(swap(doc), separators=(",", ":"))
    for i, raw in enumerate(raws):
        text = text.replace(f'"@@RAW{i}@@"', raw, 1)
    return text


def _nodes(doc: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    yield path, doc
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _nodes(v, (*path, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _nodes(v, (*path, i))


def mutate_json(doc: Any, rng: random.Random) -> tuple[Any, str]:
    """A copy of ``doc`` with one value, key or container changed; and what was done."""
    doc = json.loads(json.dumps(doc))
    nodes = [(p, n) for p, n in _nodes(doc) if p]
    if not nodes:
        return _json_palette(rng), "replace the document"
    path, node = rng.choice(nodes)
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    key = path[-1]
    op = rng.choice(["value", "value", "value", "delete", "rename", "number", "dup"])
    if op == "delete":
        del parent[key]
        return doc, f"delete {list(path)}"
    if op == "rename" and isinstance(parent, dict):
        new = rng.choice(["", "..", "/abs", "__metadata__", "0", key + "Z", "a" * 300, "\x00"])
        parent[new] = parent.pop(key)
        return doc, f"rename {list(path)} -> {new!r}"
    if op == "number" and type(node) is int:
        parent[key] = rng.choice([node + 1, node - 1, -node, node * 2**32, 2**63 - 1, 2**64, -1, 0])
        return doc, f"number {list(path)}: {node} -> {parent[key]}"
    if op == "dup" and isinstance(parent, list):
        parent.insert(key, json.loads(json.dumps(node)))
        return doc, f"duplicate {list(path)}"
    value = _json_palette(rng)
    parent[key] = value
    shown = value if not isinstance(value, str) or len(value) < 40 else value[:30] + f"...({len(value)})"
    return doc, f"set {list(path)} = {shown!r}"


def _byte_mutation(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    out = bytearray(data)
    op = rng.choice(["flip", "flip", "flip", "truncate", "splice", "zero", "byte", "extend", "u64", "cut_tail"])
    if not out:
        return b"\x00", "one zero byte in an empty file"
    if op == "flip":
        spots = [rng.randrange(len(out)) for _ in range(rng.randint(1, 4))]
        for pos in spots:
            out[pos] ^= 1 << rng.randrange(8)
        return bytes(out), f"flip bits at {spots}"
    if op == "truncate":
        keep = rng.randrange(len(out))
        return bytes(out[:keep]), f"truncate to {keep} bytes"
    if op == "cut_tail":
        n = rng.randint(1, 32)
        return bytes(out[:-n]), f"cut the last {n} bytes"
    if op == "splice":
        pos = rng.randrange(len(out) + 1)
        junk = rng.randbytes(rng.randint(1, 32))
        return bytes(out[:pos] + junk + out[pos:]), f"insert {len(junk)} bytes at {pos}"
    if op == "zero":
        pos, n = rng.randrange(len(out)), rng.randint(1, 256)
        out[pos:pos + n] = bytes(min(n, len(out) - pos))
        return bytes(out), f"zero {n} bytes at {pos}"
    if op == "byte":
        pos = rng.randrange(len(out))
        out[pos] = rng.choice([0, 0x7F, 0x80, 0xFF, ord("{"), ord("["), ord('"'), ord("\\")])
        return bytes(out), f"set byte {pos} to {out[pos]:#x}"
    if op == "extend":
        extra = rng.choice([b"\x00" * rng.randint(1, 64), rng.randbytes(rng.randint(1, 64)), data[:64]])
        return bytes(out) + extra, f"append {len(extra)} bytes"
    pos = rng.choice([0, 0, rng.randrange(max(1, len(out) - 8))])
    value = rng.choice([0, 1, 7, len(out), len(out) - 8, 2**31, 2**63, 2**64 - 1, 100 * 2**20, 100 * 2**20 + 1])
    out[pos:pos + 8] = struct.pack("<Q", value)[: len(out) - pos]
    return bytes(out), f"u64 {value} at {pos}"


# -- native header structure (single, directory and sharded parts, encrypted plaintext) ----------

def _split_native(data: bytes) -> tuple[dict[str, Any], bytes] | None:
    try:
        (n,) = struct.unpack("<Q", data[:8])
        return json.loads(data[8:8 + n]), data[8 + n:]
    except Exception:
        return None


def _join_native(header_text: str, body: bytes) -> bytes:
    raw = header_text.encode("utf-8", "surrogatepass")
    raw += b" " * (-(len(raw) + 8) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


def _forge_native(text: str) -> str:
    """Recompute the header check of a mutated header text (where it still parses)."""
    from torchresume.format import native
    doc = json.loads(text)
    meta = doc.get("__metadata__")
    if not isinstance(meta, dict) or not isinstance(meta.get("torchresume"), str):
        return text
    index = {k: v for k, v in doc.items() if k != "__metadata__"}
    meta["torchresume_check"] = native._header_check(index, meta["torchresume"])
    return json.dumps(doc, separators=(",", ":"))


def native_structure(data: bytes, rng: random.Random, forge: bool) -> tuple[bytes, str] | None:
    """A native file with one header value changed (in the safetensors index or in the metadata)."""
    split = _split_native(data)
    if split is None:
        return None
    doc, body = split
    meta = doc.get("__metadata__", {})
    where = rng.choice(["index", "meta", "meta", "data"]) if isinstance(meta.get("torchresume"), str) else "index"
    if where == "data" and body:  # change a value and recompute its digest: xxh3 is unkeyed
        pos = rng.randrange(len(body))
        body = body[:pos] + bytes([body[pos] ^ 0x10]) + body[pos + 1:]
        inner = json.loads(meta["torchresume"])
        from torchresume.format import native
        header = native.read_header(_Bytes(data), len(data), "seed")
        for e in header.entries:
            if e.begin <= pos < e.end:
                import xxhash
                inner["checksums"]["tensors"][e.name] = xxhash.xxh3_64_hexdigest(body[e.begin:e.end])
        meta["torchresume"] = json.dumps(inner, separators=(",", ":"))
        text, what = json.dumps(doc, separators=(",", ":")), f"data byte {pos} changed, digest recomputed"
        forge = True
    elif where == "meta":
        inner, what = mutate_json(json.loads(meta["torchresume"]), rng)
        meta["torchresume"] = _dump(inner)
        text, what = json.dumps(doc, separators=(",", ":")), "metadata: " + what
    else:
        doc, what = mutate_json(doc, rng)
        text = _dump(doc)
    if forge:
        try:
            text = _forge_native(text)
        except Exception:
            forge = False
    return _join_native(text, body), what + (" (forged)" if forge else "")


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.pos + n
        out = self.data[self.pos:end]
        self.pos += len(out)
        return out

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = pos if whence == 0 else self.pos + pos if whence == 1 else len(self.data) + pos
        return self.pos


# -- MindSpore wire structure ---------------------------------------------------------------------

def mindspore_structure(data: bytes, rng: random.Random, forge: bool) -> tuple[bytes, str]:
    """A MindSpore file with one entry's wire fields changed (CRC recomputed when ``forge``)."""
    from torchresume.format import mindspore
    body = data[:-mindspore.CRC_FOOTER] if data[-mindspore.CRC_FOOTER:].startswith(mindspore.CRC_TAG) else data
    entries = mindspore.scan(_Bytes(body), len(body), "seed")  # type: ignore[arg-type]
    rows = [[e.name, e.type_name, list(e.dims), b"".join(body[o:o + n] for o, n in e.pieces)] for e in entries]
    i = rng.randrange(len(rows))
    op = rng.choice(["name", "type", "dims", "content", "dup", "drop", "maptensor", "field", "many", "count"])
    what = f"entry {i} ({rows[i][0]}): {op}"
    extra_value: bytes | None = None
    if op == "name":
        rows[i][0] = rng.choice(["", "..", "/etc/passwd", "a" * 100_000, "\xff", rows[(i + 1) % len(rows)][0]])
    elif op == "type":
        rows[i][1] = rng.choice(["", "str", "Float64", "Int8", "Float32", "Q99", "Bool", "x" * 1000])
    elif op == "dims":
        rows[i][2] = rng.choice([[], [0], [-1], [2**63 - 1], [0, 2**63 - 1], [2**62, 2**62], [1] * 100_000,
                                 [2**32, 2**32], [*rows[i][2], 1], rows[i][2][:-1], [10**9]])
    elif op == "content":
        c = rows[i][3]
        rows[i][3] = rng.choice([c[:-1], c + b"\0", b"", c * 2, c[:len(c) // 2]])
    elif op == "dup":
        rows.insert(i, list(rows[i]))
    elif op == "drop":
        del rows[i]
    elif op == "maptensor":
        extra_value = b"\x0a\x01a\x1a\x00"
    elif op == "field":
        extra_value = rng.choice([b"\x0a\x01a\x22\x00", b"\x0a\x01a\x12\x05\x28\x01\x1a\x00\x00",
                                  b"\x0a\x01a\x12\x03\x12\x01x", b"\x0a\xff\xff\xff\xff\x0f"])
    elif op == "many":  # many tiny entries: the parse must stay linear and bounded
        n = rng.choice([1000, 20_000])
        rows += [[f"t{k}", "Int8", [1], b"\x01"] for k in range(n)]
    else:
        rows[i][2] = [2**40]
    out = b""
    for name, type_name, dims, content in rows:
        for part in mindspore._value_parts(str(name), str(type_name), dims, memoryview(bytes(content))):
            out += bytes(part)
        if extra_value is not None and name == rows[min(i, len(rows) - 1)][0]:
            out += b"\x0a" + mindspore.varint(len(extra_value)) + extra_value
            extra_value = None
    if forge or rng.random() < 0.5:
        out += mindspore.CRC_TAG + zlib.crc32(out).to_bytes(10, "big")
        what += " (CRC recomputed)"
        forge = True
    else:
        out += data[len(body):]
    return out, what


# -- one case ---------------------------------------------------------------------------------------

def _replace_with(target: Path, how: str, root: Path) -> str:
    """Replace ``target`` by a link or a special file; returns what was done."""
    outside = root / "outside"
    outside.mkdir(exist_ok=True)
    copy = outside / target.name
    if target.exists() and not target.is_dir():
        shutil.copyfile(target, copy)
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    else:
        target.unlink(missing_ok=True)
    if how == "zero":
        target.symlink_to("/dev/zero")
    elif how == "null":
        target.symlink_to("/dev/null")
    elif how == "fifo":
        os.mkfifo(target)
    elif how == "fifo_link":
        fifo = outside / "fifo"
        if not fifo.exists():
            os.mkfifo(fifo)
        target.symlink_to(fifo)
    elif how == "dir":
        target.mkdir()
    elif how == "dangling":
        target.symlink_to(outside / "missing")
    elif how == "outside":
        target.symlink_to(copy)
    elif how == "outside_rel":
        target.symlink_to(os.path.relpath(copy, target.parent))
    elif how == "self":
        target.symlink_to(target.name)
    return f"{target.name} -> {how}"


FAMILIES = ("bytes", "structure", "links", "names")


def build_case(kind: str, seed: Path, index: int, rng: random.Random, work: Path,
               families: tuple[str, ...] = FAMILIES) -> Case:
    root = work / f"{kind}-{index}"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    path = root / seed.name
    if seed.is_dir():
        shutil.copytree(seed, path)
    else:
        shutil.copyfile(seed, path)
    case = Case(kind, index, root, path)
    files = _files_of(path)
    target = rng.choice(files)
    weights = {"bytes": 8, "structure": 10, "links": 1, "names": 1 if path.is_dir() else 0}
    family = rng.choices(families, weights=[weights[f] for f in families])[0]
    if family == "links":  # a FIFO costs a full timeout: fewer of those
        how = rng.choices(["zero", "null", "fifo", "fifo_link", "dir", "dangling", "outside", "outside_rel", "self"],
                          weights=[3, 2, 1, 1, 2, 2, 3, 3, 2])[0]
        case.mutation = "link: " + _replace_with(target, how, root)
        case.outside = how in ("outside", "outside_rel") and path.is_dir()
        case.forged = how in ("outside", "outside_rel") and not path.is_dir()  # the user named a link: followed
        return case
    if family == "names":
        return _rename_part(case, rng)
    data = target.read_bytes()
    new: bytes | None = None
    if family == "structure":
        forge = rng.random() < 0.5
        new, what = _structure(kind, target, data, rng, forge, path)
        case.forged = "(forged)" in what or "recomputed" in what
    if new is None:
        new, what = _byte_mutation(data, rng)
    target.write_bytes(new)
    case.mutation = f"{target.name}: {what}"
    case.noop = new == data
    if case.forged and path.is_dir() and target.name != "manifest.json":
        _refresh_records(path, target)
    return case


def _structure(kind: str, target: Path, data: bytes, rng: random.Random, forge: bool,
               path: Path) -> tuple[bytes | None, str]:
    if kind == "mindspore":
        return mindspore_structure(data, rng, forge)
    if kind == "encrypted":
        return _encrypted_structure(data, rng)
    if target.suffix == ".json":
        doc, what = mutate_json(json.loads(data), rng)
        forged = forge and target.name != "manifest.json"
        return _dump(doc).encode("utf-8", "surrogatepass"), what + (" (forged)" if forged else "")
    got = native_structure(data, rng, forge)
    return (got[0], got[1]) if got else (None, "")


def _encrypted_structure(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    from torchresume.format import crypto
    (n,) = struct.unpack("<I", data[8:12])
    if rng.random() < 0.5:  # the envelope's JSON header
        doc, what = mutate_json(json.loads(data[12:12 + n]), rng)
        head = _dump(doc).encode("utf-8", "surrogatepass")
        return crypto.MAGIC + struct.pack("<I", len(head)) + head + data[12 + n:], "envelope: " + what
    # The plaintext changed and encrypted again with the key: what only a key holder can do.
    plain = crypto.decrypt(data, KEY, "seed")
    got = native_structure(plain, rng, forge=True)
    new_plain, what = got if got else (plain, "no change")
    return b"".join(crypto.encrypt(new_plain, KEY)), f"re-encrypted plaintext: {what} (forged)"


def _refresh_records(path: Path, changed: Path) -> None:
    """After a forged change to a part or the DCP metadata: the manifest records its new size and digest."""
    import xxhash
    manifest = path / "manifest.json"
    doc = json.loads(manifest.read_text())
    data = changed.read_bytes()
    for part in doc.get("parts", []):
        if part.get("file") == changed.name:
            part["size"] = len(data)
            split = _split_native(data)
            if split is not None:
                n = struct.unpack("<Q", data[:8])[0]
                part["header_xxh3"] = xxhash.xxh3_64_hexdigest(data[:8 + n])
    rec = doc.get("info", {}).get("dcp_metadata")
    if isinstance(rec, dict) and rec.get("file") == changed.name:
        rec["size"], rec["xxh3"] = len(data), xxhash.xxh3_64_hexdigest(data)
    manifest.write_text(json.dumps(doc))


def _rename_part(case: Case, rng: random.Random) -> Case:
    """A part (or the DCP metadata) named outside the checkpoint, its copy placed there."""
    manifest = case.path / "manifest.json"
    doc = json.loads(manifest.read_text())
    outside = case.root / "outside"
    outside.mkdir(exist_ok=True)
    records = [p for p in doc["parts"] if isinstance(p, dict)]
    rec = doc.get("info", {}).get("dcp_metadata")
    if isinstance(rec, dict) and rng.random() < 0.3:
        records = [rec]
    rec = rng.choice(records)
    old = case.path / rec["file"]
    how = rng.choice(["dotdot", "abs", "int", "nested", "empty", "dir", "manifest"])
    if how in ("dotdot", "abs"):
        shutil.move(str(old), outside / old.name)  # the data lives only outside
        rec["file"] = f"../outside/{old.name}" if how == "dotdot" else str(outside / old.name)
        case.outside = True
    elif how == "int":
        rec["file"] = rng.choice([0, 1.5, None, ["a"], {"a": 1}])
    elif how == "nested":
        rec["file"] = "sub/../" + old.name
    elif how == "empty":
        rec["file"] = rng.choice(["", ".", "/", "/dev/zero"])
    elif how == "dir":
        rec["file"] = "."
    else:
        rec["file"] = "manifest.json"
    manifest.write_text(json.dumps(doc))
    case.mutation = f"manifest names {old.name} as {rec['file']!r}"
    return case


# -- the worker -----------------------------------------------------------------------------------

def _rss_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> None:
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _flat(tree: Any) -> dict[str, Any]:
    from torchresume.state.tree import flat_view
    return flat_view(tree) if isinstance(tree, (dict, list, tuple)) else {"": tree}


def _same(a: Any, b: Any) -> bool:
    import torch
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and bool(torch.equal(a, b)))
    return type(a) is type(b) and a == b


def _changed(ref: dict[str, Any], got: Any) -> str:
    """'' when every value ``got`` holds is the original's; else which one differs."""
    flat = _flat(got.tree)
    for k, v in flat.items():
        if k not in ref:
            return f"new value {k!r}"
        if not _same(ref[k], v):
            return f"value {k!r} differs"
    missing = set(ref) - set(flat)
    if missing and got.format not in ("safetensors",):
        return f"values missing: {sorted(missing)[:3]}"
    return ""


def worker() -> int:
    """Read cases (JSON lines) on stdin; answer one JSON line per step on stdout."""
    from torchresume import files
    from torchresume.errors import TorchResumeError
    from torchresume.log import log
    handler = _Warnings()
    log.addHandler(handler)
    refs: dict[str, dict[str, Any]] = {}
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing else may write on the answer channel
    for line in sys.stdin:
        job = json.loads(line)
        key = bytes.fromhex(job["key"]) if job["key"] else None
        if job.get("warm"):  # load every seed with every step once: imports and caches are not timed
            for seed, seed_key in job["warm"]:
                k = bytes.fromhex(seed_key) if seed_key else None
                refs[seed] = _flat(files.read_checkpoint(seed, dec_key=k).tree)
                files.verify(seed, dec_key=k)
                files.describe(seed, dec_key=k)
            out.write(json.dumps({"ready": True}) + "\n")
            out.flush()
            continue
        for step in STEPS:
            handler.lines.clear()
            _reset_peak()
            base = _rss_kib("VmRSS")
            start = time.monotonic()
            result: dict[str, Any] = {"step": step, "outcome": "ok"}
            try:
                if step == "load":
                    got = files.read_checkpoint(job["path"], dec_key=key)
                    result["changed"] = _changed(refs[job["seed"]], got)
                    result["format"] = got.format
                elif step == "verify":
                    result["valid"] = files.verify(job["path"], dec_key=key).valid
                else:
                    files.describe(job["path"], dec_key=key)
            except TorchResumeError as exc:
                result.update(outcome="typed", type=type(exc).__name__, message=str(exc)[:300])
            except BaseException as exc:
                result.update(outcome="untyped", type=type(exc).__name__, message=str(exc)[:300],
                              trace=traceback.format_exc()[-1500:])
            result["secs"] = time.monotonic() - start
            result["rss"] = max(0, _rss_kib("VmHWM") - base) * 1024
            result["warnings"] = list(handler.lines[:3])
            got = None
            out.write(json.dumps(result) + "\n")
            out.flush()
    return 0


# -- the parent -------------------------------------------------------------------------------------

@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    seeds: dict[str, Path]
    pending: bytes = b""

    @classmethod
    def start(cls, seeds: dict[str, Path]) -> Worker:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.fuzz_checkpoints", "--worker"], cwd=ROOT,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                                preexec_fn=lambda: os.nice(5))
        w = cls(proc, seeds)
        warm = [[str(p), KEY.hex() if kind == "encrypted" else ""] for kind, p in seeds.items()]
        assert proc.stdin is not None
        proc.stdin.write((json.dumps({"warm": warm, "key": ""}) + "\n").encode())
        proc.stdin.flush()
        if w.answer(300) is None:
            raise RuntimeError("the fuzz worker did not start within 300 s")
        return w

    def rss(self) -> int:
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait()

    def answer(self, timeout: float, kill: bool = True, unblock: Path | None = None) -> dict[str, Any] | None:
        """The next step's answer; None if it took over ``timeout`` s (then killed, with ``kill``).

        ``unblock``: a case folder whose FIFOs are given an end of file while waiting.
        """
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            if unblock is not None:
                _unblock(unblock)
            left = deadline - time.monotonic()
            if self.rss() > RSS_GUARD:
                self.kill()
                return None
            if left <= 0:
                if kill:
                    self.kill()
                return None
            if b"\n" in self.pending:
                line, _, self.pending = self.pending.partition(b"\n")
                return dict(json.loads(line))
            ready, _, _ = select.select([self.proc.stdout], [], [], min(left, 0.1))
            if ready:  # read what is there (a buffered readline would hide a second line from select)
                chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
                if not chunk:
                    self.proc.wait()
                    return {"outcome": "died", "type": f"exit {self.proc.returncode}", "message": "", "secs": 0,
                            "rss": 0}
                self.pending += chunk


@dataclass
class Tally:
    cases: int = 0
    noop: int = 0
    loaded: int = 0
    typed: int = 0
    untyped: int = 0
    timeouts: int = 0
    rss: int = 0
    silent: int = 0
    outside: int = 0
    verdict: int = 0
    findings: list[str] = field(default_factory=list)
    untyped_kinds: Counter[str] = field(default_factory=Counter)

    def row(self, kind: str) -> str:
        return (f"{kind:10} {self.cases:>6} {self.typed:>7} {self.loaded:>7} {self.untyped:>8} {self.timeouts:>8} "
                f"{self.rss:>4} {self.silent:>6} {self.outside:>7} {self.verdict:>7}")


HEADER = (f"{'kind':10} {'cases':>6} {'typed':>7} {'loaded':>7} {'untyped':>8} {'timeouts':>8} "
          f"{'rss':>4} {'silent':>6} {'outside':>7} {'verdict':>7}")


def run_case(w: Worker, case: Case, seed: Path, timeout: float) -> tuple[list[str], Worker, dict[str, Any]]:
    """The findings of one case (empty: none), the worker to use next, and what the load step gave."""
    key = KEY.hex() if case.kind == "encrypted" else ""
    assert w.proc.stdin is not None
    w.proc.stdin.write((json.dumps({"path": str(case.path), "seed": str(seed), "key": key}) + "\n").encode())
    w.proc.stdin.flush()
    limit = 10 * _size_of(case.path) + RSS_SLACK
    problems: list[str] = []
    answers: dict[str, dict[str, Any]] = {}
    blocked = False
    for step in STEPS:
        got = w.answer(timeout, kill=False, unblock=case.root if blocked else None)
        if got is None and _unblock(case.root):  # a read blocked on a FIFO: give it an end, keep the worker
            problems.append(f"timeout: {step} over {timeout:.0f} s (blocked on a FIFO)")
            blocked = True  # the next steps are given an end at once
            got = w.answer(timeout, unblock=case.root)
            if got is not None and got.get("outcome") != "died":
                got["secs"] = 0.0
        if got is None or got.get("outcome") == "died":
            problems.append(f"timeout: {step} over {timeout:.0f} s" if got is None else f"untyped: {step}: worker died")
            w.kill()
            return problems, Worker.start(w.seeds), answers.get("load", {"outcome": "timeout"})
        answers[step] = got
        if got["outcome"] == "untyped":
            problems.append(f"untyped: {step}: {got['type']}: {got['message'][:200]}\n{got.get('trace', '')}")
        if got["secs"] > timeout:
            problems.append(f"timeout: {step} took {got['secs']:.1f} s")
        if got["rss"] > limit:
            problems.append(f"rss: {step} grew {got['rss'] >> 20} MB (limit {limit >> 20} MB)")
    load = answers["load"]
    if load["outcome"] == "ok":
        warned = any("nothing protects" in m for m in load["warnings"])
        if load.get("changed") and not case.forged and not case.outside and not warned:
            problems.append(f"silent: the load returned changed values ({load['changed']})")
        if case.outside:
            problems.append("outside: the load read a part through a name or link outside the checkpoint")
    valid = answers["verify"].get("valid")
    if valid is not None and valid != (load["outcome"] == "ok"):
        problems.append(f"verdict: verify says valid={valid} but the load {load['outcome']}")
    return problems, w, load


def _unblock(root: Path) -> bool:
    """Open every FIFO under ``root`` for writing and close it: a reader blocked on one gets an end of file."""
    found = False
    for p in root.rglob("*"):
        with contextlib.suppress(OSError):
            if stat.S_ISFIFO(p.stat().st_mode):
                os.close(os.open(p, os.O_WRONLY | os.O_NONBLOCK))
                found = True
    return found


def fuzz_kind(kind: str, seed: Path, mutations: int, rng_seed: int, work: Path, keep: Path | None,
              timeout: float, workers: list[Worker], log_line: Callable[[str], None],
              families: tuple[str, ...] = FAMILIES) -> Tally:
    tally = Tally()
    rng = random.Random(f"{rng_seed}-{kind}")
    for i in range(mutations):
        case = build_case(kind, seed, i, rng, work, families)
        problems, workers[0], load = run_case(workers[0], case, seed, timeout)
        tally.cases += 1
        tally.noop += case.noop
        outcome = load.get("outcome")
        tally.loaded += outcome == "ok"
        tally.typed += outcome == "typed"
        kinds = {p.split(":", 1)[0] for p in problems}
        tally.untyped += "untyped" in kinds
        tally.timeouts += "timeout" in kinds
        tally.rss += "rss" in kinds
        tally.silent += "silent" in kinds
        tally.outside += "outside" in kinds
        tally.verdict += "verdict" in kinds
        for p in problems:
            if p.startswith("untyped"):
                tally.untyped_kinds[p.split("\n")[0][:160]] += 1
        if problems:
            kept = case.root
            if keep is not None:
                kept = keep / case.root.name
                if kept.exists():
                    shutil.rmtree(kept)
                shutil.copytree(case.root, kept, symlinks=True, copy_function=_copy_special)
            said = " | ".join(p.split("\n")[0] for p in problems)
            tally.findings.append(f"{kind} #{i} [{case.mutation}] {kept}: {said}")
            log_line(f"  {tally.findings[-1][:400]}")
        _remove(case.root)
    return tally


def _copy_special(src: str, dst: str) -> None:
    if stat.S_ISFIFO(os.lstat(src).st_mode):
        os.mkfifo(dst)
    else:
        shutil.copy2(src, dst)


def _remove(root: Path) -> None:
    for p in root.rglob("*"):  # a FIFO or a link must not be followed by rmtree
        if p.is_symlink() or (p.exists() and not p.is_dir() and not p.is_file()):
            p.unlink()
    shutil.rmtree(root, ignore_errors=True)


def run(kinds: list[str], mutations: int, seed: int, keep: Path | None, timeout: float = 5.0,
        log_line: Callable[[str], None] = print, families: tuple[str, ...] = FAMILIES) -> dict[str, Tally]:
    """Fuzz ``kinds`` with ``mutations`` cases each; returns a Tally per kind."""
    tallies: dict[str, Tally] = {}
    with tempfile.TemporaryDirectory(prefix="torchresume-fuzz-") as tmp:
        seeds = make_seeds(Path(tmp) / "seeds", kinds)
        workers = [Worker.start(seeds)]
        try:
            for kind in kinds:
                start = time.monotonic()
                tallies[kind] = fuzz_kind(kind, seeds[kind], mutations, seed, Path(tmp) / "cases", keep, timeout,
                                          workers, log_line, families)
                log_line(f"{kind}: {mutations} cases in {time.monotonic() - start:.0f} s")
        finally:
            for w in workers:
                w.kill()
    return tallies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mutations", type=int, default=3000, help="cases per kind (default 3000)")
    parser.add_argument("--kinds", nargs="*", default=list(KINDS), choices=KINDS)
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds one step may take (default 5)")
    parser.add_argument("--keep", type=Path, default=Path("fuzz-findings"),
                        help="folder the cases with findings are copied to (default ./fuzz-findings)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        return worker()
    args.keep.mkdir(parents=True, exist_ok=True)
    tallies = run(args.kinds, args.mutations, args.seed, args.keep.resolve(), args.timeout,
                  log_line=lambda line: print(line, flush=True))
    print(HEADER)
    for kind, t in tallies.items():
        print(t.row(kind))
    for kind, t in tallies.items():
        for what, n in t.untyped_kinds.most_common():
            print(f"{kind}: {n} x {what}")
    return 1 if any(t.findings for t in tallies.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
