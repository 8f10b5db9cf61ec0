"""Commands on checkpoint files: inspect, verify, diff, ls."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from datetime import datetime
from typing import Any

from torchresume import inspection
from torchresume.catalog import list_checkpoints
from torchresume.cli import options
from torchresume.errors import CheckpointNotFoundError
from torchresume.storage import LocalStorage, resolve

# API parameter names in library messages -> the flags a CLI user types.
_FLAG_WORDS = {"pass dec_key=<the key used to save it>": "pass --dec-key-hex <the key, as hex>",
               "dec_key=": "--dec-key-hex", "enc_key=": "--enc-key-hex", "drop dec_key": "drop --dec-key-hex",
               "resume='none'": "--resume none", "the same data and batch_size": "the same data and --batch-size",
               "the same global batch_size": "the same --batch-size (the global batch under torchrun)"}
_FLAG_PATTERNS = ((re.compile(r"prefix='([^']+)'(?: \(ModelCheckpoint's prefix\))?"), r"--prefix \1"),)


def cli_words(message: str) -> str:
    """``message`` with the library's argument names said as this command line's flags."""
    for api, flag in _FLAG_WORDS.items():
        message = message.replace(api, flag)
    for pattern, flag in _FLAG_PATTERNS:
        message = pattern.sub(flag, message)
    return message


def key_options() -> argparse.ArgumentParser:
    """The key options of every command that reads a checkpoint's contents."""
    keys = argparse.ArgumentParser(add_help=False)
    keys.add_argument("--dec-key-hex", type=options.hex_key, default=None, metavar="HEX",
                      help="key of an encrypted checkpoint, as hex (unencrypted files need none)")
    return keys


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    keys = [*parents, key_options()]
    p = sub.add_parser("inspect", parents=keys, help="describe a checkpoint without model code",
                       description="Describe a checkpoint (format, kind, info, tensors) without model code.")
    p.add_argument("path", type=options.url, help="checkpoint file, directory checkpoint or URL")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("verify", parents=keys, help="check a file (or every checkpoint in a directory)",
                       description="Read every byte and check every checksum; exit 0 valid, 1 invalid.")
    p.add_argument("path", type=options.url, help="checkpoint, or a directory of checkpoints")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("diff", parents=keys, help="tensors added, removed or changed between two checkpoints",
                       description="Tensors, values and metadata added, removed or changed from A to B; "
                                   "exit 0 when they are the same, 1 when they differ (as diff and cmp do). "
                                   "Metadata that says where and how a run ran, not what it computed, is "
                                   f"ignored unless --all: {', '.join(inspection.RUN_SPECIFIC)}.")
    p.add_argument("a", type=options.url, help="the first checkpoint")
    p.add_argument("b", type=options.url, help="the second checkpoint")
    p.add_argument("--all", action="store_true",
                   help="compare the run-specific metadata too (save time, directories, device, ...)")
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("convert", parents=keys,
                       help="rewrite any readable checkpoint as a native one, a MindSpore .ckpt (--to mindspore) or "
                            "the model's weights alone as a plain model.safetensors (--to safetensors)")
    p.add_argument("src", type=options.url, help="the checkpoint to read")
    p.add_argument("dst", type=options.url, help="the file to write (its folder must exist)")
    p.add_argument("--enc-key-hex", type=options.hex_key, default=None, metavar="HEX",
                   help="encrypt the result with this key (hex, 16/24/32 bytes)")
    p.add_argument("--to", choices=("native", "mindspore", "safetensors"), default="native",
                   help="native torchresume file, MindSpore protobuf .ckpt, or the weights alone as a "
                        "plain safetensors file (for transformers' from_pretrained and the Hub)")
    p.add_argument("--enc-mode", choices=("AES-GCM", "AES-CBC"), default="AES-GCM",
                   help="with --to mindspore and --enc-key-hex: the cipher")
    p.add_argument("--crc", action="store_true", help="with --to mindspore: add the CRC32 footer")
    p.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("copy", parents=parents, help="parallel, resumable copy between local disk and object storage")
    p.add_argument("src", type=options.url, help="file or directory, local or s3://")
    p.add_argument("dst", type=options.url, help="destination directory, local or s3://")
    p.add_argument("--workers", type=options.whole(1, 256), default=8, help="files copied at once")
    p.set_defaults(func=cmd_copy)

    p = sub.add_parser("prune", parents=keys, help="delete all but the newest K checkpoints of each prefix")
    p.add_argument("directory", type=options.url, help="directory or URL of checkpoints")
    p.add_argument("--keep", type=options.whole(1), required=True,
                   help="checkpoints of each prefix to keep (the newest valid one is always kept)")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("ls", parents=keys, help="checkpoints in a directory, newest first")
    p.add_argument("directory", type=options.url, help="directory or URL of checkpoints")
    p.add_argument("--quick", action="store_true", help="check headers only, not checksums")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_ls)


def cmd_inspect(args: argparse.Namespace) -> int:
    d = inspection.describe(args.path, args.dec_key_hex)
    if args.json:
        print(json.dumps(d.to_json(), default=str))
        return 0
    rows: list[tuple[str, str]] = [
        ("file", f"{d.path} ({inspection.human_bytes(d.size)})"),
        ("format", d.format + ("  (encrypted: pass --dec-key-hex to read it)" if d.kind == "encrypted"
                               else "  (encrypted)" if d.encrypted else "")),
        ("kind", d.kind)]
    rows += [(key, _readable(key, value)) for key, value in {**d.info, **d.append}.items() if value is not None]
    if d.tensors:
        total = sum(t["bytes"] for t in d.tensors)
        rows.append(("tensors", f"{len(d.tensors)} ({inspection.human_bytes(total)})"))
    width = max(len(k) for k, _ in rows) + 2
    for key, value in rows:
        print(f"{key + ':':<{width}}{value}")
    if d.tensors:
        name_width = max(len(short_name(t["name"])) for t in d.tensors)
        for t in d.tensors:
            print(f"  {short_name(t['name']):<{name_width}}  {t['dtype']:<8} {t['shape']!s:<18} "
                  f"{inspection.human_bytes(t['bytes'])}")
    _print_logical(args.path)
    if d.values:
        print("values:")
        hidden: dict[str, list[str]] = {}
        for key, value in d.values.items():
            group = _rng_group(key)
            if group is None:
                print(f"  {short_name(key)} = {_short(value)}")
            elif key[len(group) + 1:].split(".")[0] not in hidden.setdefault(group, []):
                hidden[group].append(key[len(group) + 1:].split(".")[0])
        for group, parts in hidden.items():
            print(f"  {group}.* = <random generator states: {', '.join(parts)}; --json shows them>")
    return 0


def short_name(name: str, limit: int = 40) -> str:
    """A state name for people: a long ``{...}`` in it (Lightning names a callback's state after its
    settings, ``TorchResumeCheckpoint{'monitor': None, 'mode': 'min', ...}``) cut after the setting
    that passes ``limit`` characters (--json keeps names whole)."""
    def cut(match: re.Match[str]) -> str:
        inner = match.group(1)
        if len(inner) <= limit:
            return match.group(0)
        end = inner.find(", ", limit // 2)
        return "{" + inner[:end if 0 < end <= limit else limit] + ", ...}"
    return re.sub(r"\{([^{}]*)\}", cut, name)


def _rng_group(key: str) -> str | None:
    """The dotted prefix of a random generator's state (``rng``, ``sampler.epoch_start``), if any."""
    parts = key.split(".")
    for i, part in enumerate(parts):
        if part in ("rng", "epoch_start"):
            return ".".join(parts[:i + 1 + (part == "epoch_start" and parts[i + 1:i + 2] == ["global"])])
    return None


def _readable(key: str, value: Any) -> str:
    """A header value for people: save times in ISO 8601, nested settings one per line."""
    if key == "time" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value).astimezone().isoformat(timespec="seconds")
    if isinstance(value, dict):
        return ", ".join(f"{k}={_short(v)}" for k, v in value.items()) or "-"
    if isinstance(value, str):
        return value
    return _short(value)


def _short(value: Any, limit: int = 80) -> str:
    """repr, but a long sequence (a generator's state) is summarised, not printed whole."""
    if isinstance(value, (list, tuple)) and len(repr(value)) > limit:
        count = sum(len(v) if isinstance(v, (list, tuple)) else 1 for v in value)
        return f"<{type(value).__name__} of {count} numbers>"
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def cmd_verify(args: argparse.Namespace) -> int:
    key = args.dec_key_hex
    _must_exist(args.path)
    if inspection.is_directory(args.path) and not _checkpoint_dir(args.path):
        paths = inspection.checkpoint_files(args.path)
        if not paths:
            raise CheckpointNotFoundError(f"{args.path}: no checkpoint files in this directory")
    else:
        paths = [args.path]
    bad = 0
    for path in paths:
        verdict = inspection.verify(path, key if key is None or _encrypted(path) else None)
        if verdict.valid:
            print(f"OK       {path}")
        else:
            bad += 1
            print(f"INVALID  {cli_words(verdict.reason)}")
    return 1 if bad else 0


def _must_exist(path: str) -> None:
    storage, where = resolve(path)
    if not storage.exists(where):
        raise CheckpointNotFoundError(f"{path}: no such file or directory")


def _encrypted(path: str) -> bool:
    try:
        return inspection.describe(path).encrypted
    except (OSError, ValueError):
        return False


def _read(path: str, key: bytes | None) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(tree, info, append) of any checkpoint (a sharded one read as one); the key used if encrypted."""
    from torchresume.files import read_checkpoint
    ckpt = read_checkpoint(path, dec_key=key if key is not None and _encrypted(path) else None)
    return ckpt.tree, ckpt.info, ckpt.append


def cmd_diff(args: argparse.Namespace) -> int:
    a_tree, a_info, a_append = _read(args.a, args.dec_key_hex)
    b_tree, b_info, b_append = _read(args.b, args.dec_key_hex)
    trees = {args.a: a_tree, args.b: b_tree}
    changes = inspection.diff(args.a, args.b, load=trees.__getitem__)
    meta = inspection.diff_metadata(a_info, b_info, "info") + inspection.diff_metadata(a_append, b_append, "append")
    ignored = [] if args.all else [c for c in meta if inspection.run_specific(c)]
    meta = [c for c in meta if c not in ignored]
    if not changes and not meta:
        if ignored:
            print(f"same tensors, values and metadata; run-specific metadata differs "
                  f"({', '.join(c.name for c in ignored)}; --all compares it)")
        else:
            print("identical: same tensors, values and metadata")
        return 0
    for c in changes + meta:
        mark = {"added": "+", "removed": "-", "changed": "~"}[c.change]
        extra = f"  max|a-b|={c.max_abs_diff:.6g}" if c.max_abs_diff is not None else ""
        detail = f"  {c.detail}" if c.detail and c.detail != "values" else ""
        print(f"{mark} {c.name}{detail}{extra}")
    if not changes:
        print("same tensors and values; metadata differs")
    return 1


def _print_logical(path: str) -> None:
    """For a sharded checkpoint, every tensor at its global size and how many chunks hold it."""
    from torchresume.files import sharded
    from torchresume.files.directory import read_manifest
    if not (inspection.is_directory(path) and _checkpoint_dir(path)):
        return
    doc = read_manifest(path)
    if not sharded.is_sharded(doc):
        return
    rows = sharded.logical_tensors(path, doc)
    print(f"sharded:      {len(rows)} logical tensors over {doc['info'].get('world_size')} ranks (DCP metadata)")
    width = max((len(r["name"]) for r in rows), default=0)
    for r in rows:
        print(f"  {r['name']:<{width}}  {r['dtype']:<8} {r['shape']!s:<18} in {r['chunks']} chunk(s)")


def _checkpoint_dir(path: str) -> bool:
    """A directory checkpoint itself (its manifest, or a .ckpt name), not a directory of checkpoints."""
    from torchresume.files.directory import MANIFEST
    storage, where = resolve(path)
    return path.rstrip("/").endswith(".ckpt") or storage.exists(storage.join(where, MANIFEST))


def cmd_ls(args: argparse.Namespace) -> int:
    if not inspection.is_directory(args.directory):
        raise CheckpointNotFoundError(f"{args.directory}: no such directory"
                                      + ("" if "://" in args.directory or ":" not in args.directory
                                         else " (a URL is written s3://bucket/prefix)"))
    entries = list_checkpoints(args.directory, verify=not args.quick, dec_key=args.dec_key_hex)
    # Valid checkpoints first, newest first; then the invalid ones (never resumed from).
    entries = [e for e in entries if e.valid] + [e for e in entries if not e.valid]
    if args.json:
        print(json.dumps([e.to_json() for e in entries]))
        return 0
    if not entries:
        print(f"{args.directory}: no checkpoints")
        return 0
    print(f"{'name':<32} {'epoch':>5} {'step':>6} {'size':>10}  status")
    for e in entries:
        status = ("valid, non-finite (NaN or Inf weights: the run diverged)" if e.finite is False
                  else "valid") if e.valid else f"INVALID: {cli_words(e.reason)}"
        print(f"{e.name:<32} {_dash(e.epoch):>5} {_dash(e.step):>6} "
              f"{inspection.human_bytes(e.size):>10}  {status}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from torchresume.files import encode_state, read_checkpoint, sharded_as_one, write_encoded
    from torchresume.format import crypto
    from torchresume.storage import resolve
    dec, enc = args.dec_key_hex, args.enc_key_hex
    if args.to != "mindspore" and (args.crc or args.enc_mode != "AES-GCM"):
        raise options.UsageError(f"{'--crc' if args.crc else '--enc-mode ' + args.enc_mode} applies to "
                                 "MindSpore files only; add --to mindspore (a native file has per-tensor "
                                 "checksums and is encrypted with AES-GCM)")
    if enc is not None and args.to == "safetensors":
        raise options.UsageError("--enc-key-hex does not apply to --to safetensors: a plain safetensors "
                                 "file is never encrypted (drop --enc-key-hex, or convert to native)")
    if enc is not None and args.to == "native":
        enc = crypto.check_key(enc, "AES-GCM", "enc_key")
    _must_exist(args.src)
    storage, where = resolve(args.dst)
    if storage.exists(where) and not args.force:
        raise FileExistsError(f"{args.dst} exists; pass --force to overwrite it")
    folder = os.path.dirname(where)
    if isinstance(storage, LocalStorage) and folder and not os.path.isdir(folder):
        raise CheckpointNotFoundError(f"{args.dst}: the folder {folder} does not exist; create it first "
                                      f"(mkdir -p {folder})")
    if args.to == "mindspore":
        from torchresume.files.mindspore_io import convert
        print(f"wrote {args.dst} ({convert(args.src, args.dst, dec, enc, args.enc_mode, args.crc)})")
        return 0
    ckpt = read_checkpoint(args.src, dec_key=dec)
    if args.to == "safetensors":  # the model's weights alone (a sharded checkpoint reads as one file)
        return _write_weights(ckpt.tree, args.src, args.dst, ckpt.format)
    native = ckpt.format in ("torchresume", sharded_as_one.FORMAT)  # a sharded one reads as one file
    kind = ckpt.kind if native else "tensors" if ckpt.kind == "tensors" else "state"
    write_encoded(encode_state(kind, ckpt.tree, info=ckpt.info, append=ckpt.append), args.dst, enc)
    source = (f"consolidated from {ckpt.info.get('world_size')} ranks' shards"
              if ckpt.format == sharded_as_one.FORMAT else f"from {ckpt.format}")
    print(f"wrote {args.dst} ({kind}, {source}{', encrypted' if enc else ''})")
    return 0


def _write_weights(tree: Any, src: str, dst: str, origin: str) -> int:
    from torchresume.files import write_encoded
    from torchresume.files.single import encode_weights
    write_encoded(encode_weights(tree, src), dst, None)
    print(f"wrote {dst} (the model's weights as plain safetensors, from {origin})")
    return 0


def cmd_copy(args: argparse.Namespace) -> int:
    import time

    from torchresume.transfer import copy
    start = time.perf_counter()
    report = copy(args.src, args.dst, workers=args.workers)
    seconds = time.perf_counter() - start
    rate = report.bytes / seconds / 1e6 if seconds > 0 else 0.0
    print(f"copied {len(report.copied)} files ({inspection.human_bytes(report.bytes)}, {rate:.1f} MB/s), "
          f"skipped {len(report.skipped)} already present")
    for name, reason in sorted(report.failed.items()):
        print(f"torchresume: error: failed to copy {name}: {reason}", file=sys.stderr)
    return 1 if report.failed else 0


def cmd_prune(args: argparse.Namespace) -> int:
    from torchresume.manager import prune
    if not inspection.is_directory(args.directory):
        raise CheckpointNotFoundError(f"{args.directory}: no such directory")
    for path in prune(args.directory, args.keep, args.dec_key_hex):
        print(f"deleted {path}")
    return 0


def _dash(value: int | None) -> str:
    return "-" if value is None else str(value)


# CheckpointConfig options that `torchresume train` sets from a flag (refusals under torchrun name them).
_FLAG_WORDS.update({"leave write_mb_per_s=None": "drop --write-mb-per-s", "write_mb_per_s=": "--write-mb-per-s ",
                    "raise save_deadline_s": "raise --save-deadline", "save_deadline_s=": "--save-deadline "})
