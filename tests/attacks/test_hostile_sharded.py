"""Hostile sharded checkpoints: no code runs, no name leads out, no change of meaning passes.

The pickle case: a version 1 checkpoint (tests/fixtures/sharded_v1, written before non-tensor
values became typed JSON) whose part the attacker rewrote with a pickle that would create a file
when unpickled, every checksum and the manifest record recomputed, so only the plain-data check
stands between the file and ``torch.load(weights_only=False)`` inside DCP's default load planner.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import xxhash
from torch import nn

from torchresume.distributed import ShardedStore
from torchresume.errors import CorruptCheckpointError, DamagedRunError
from torchresume.files.directory import write_part
from torchresume.files.sharded_reader import read_part
from torchresume.format import native

V1 = Path(__file__).parents[1] / "fixtures" / "sharded_v1"


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.makedirs, (self.marker,))


def _pickled_values(tree: dict[str, Any]) -> list[str]:
    names = []
    for name, value in tree.items():
        if isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.dim() == 1:
            try:
                torch.load(io.BytesIO(value.numpy().tobytes()), weights_only=True)
            except Exception:
                continue
            names.append(name)
    return names


def _follow_the_parts(path: str, doc: dict[str, Any], ranges: bool) -> None:
    """The attacker also rewrites dcp_metadata.json to match the rewritten parts (each chunk's byte
    range and xxh3, read from its part's header; ``ranges=False``: none, as written before 0.3) and
    the manifest's digest of it, so only the plain-data check stands in the way."""
    meta_file = Path(path) / "dcp_metadata.json"
    meta = json.loads(meta_file.read_text())
    for entry in meta["storage_data"]:
        if not ranges:
            entry.pop("at", None), entry.pop("xxh3", None)
            continue
        with open(Path(path) / entry["file"], "rb") as f:
            header = native.read_header(f, os.path.getsize(Path(path) / entry["file"]), entry["file"])
        found = next(e for e in header.entries if e.name == entry["name"])
        entry["at"] = [header.data_start + found.begin, header.data_start + found.end]
        entry["xxh3"] = header.meta["checksums"]["tensors"][entry["name"]] if header.meta else None
    raw = json.dumps(meta, separators=(",", ":")).encode()
    meta_file.chmod(0o600)
    meta_file.write_bytes(raw)
    doc["info"]["dcp_metadata"].update(size=len(raw), xxh3=xxhash.xxh3_64_hexdigest(raw))


@pytest.mark.parametrize("ranges", [True, False], ids=["chunk-ranges", "before-0.3"])
def test_a_pickle_that_runs_code_is_refused_and_never_runs(tmp_path: Path, ranges: bool) -> None:
    net = nn.Linear(4, 3)
    mgr = ShardedStore(str(tmp_path / "run"), prefix="x", keep=2)
    path = str(shutil.copytree(V1 / "plain" / "x-1_6.ckpt", tmp_path / "run" / "x-1_6.ckpt"))
    manifest_file = Path(path) / "manifest.json"
    doc = json.loads(manifest_file.read_text())
    marker = tmp_path / "pwned"
    rewritten = 0
    for record in doc["parts"]:
        tree = read_part(path, record)
        names = _pickled_values(tree)
        if not names:
            continue
        buffer = io.BytesIO()
        torch.save(_Payload(str(marker)), buffer)  # what DCP's torch.load(weights_only=False) would run
        for name in names:
            tree[name] = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
        new = write_part(path, record["file"].removesuffix(".safetensors"), "tensors", tree)
        record.update(size=new.size, header_xxh3=new.header_xxh3)
        rewritten += len(names)
    assert rewritten >= 1, "the optimizer's param_groups should be stored as pickled bytes"
    _follow_the_parts(path, doc, ranges)
    manifest_file.write_text(json.dumps(doc))

    state = {"model": nn.Linear(4, 3).state_dict(), "optim": torch.optim.Adam(net.parameters(), lr=0.1).state_dict()}
    with pytest.raises(CorruptCheckpointError, match=r"a non-tensor value is not plain data \(.*\); refusing to "
                                                    r"unpickle it"):
        mgr.restore(state, path=str(path))  # named: without it the only checkpoint is passed over
    assert not marker.exists()
    with pytest.raises(DamagedRunError, match="refusing to unpickle it"):  # the newest, passed over
        mgr.restore(state)
    assert not marker.exists()


# --- Shared by the cases below: a small real sharded run, and an attacker's edits of it. ---

KEY = bytes(range(16))


def _net_and_optimizer() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    net = nn.Linear(4, 3)
    opt = torch.optim.Adam(net.parameters(), lr=0.01, betas=(0.8, 0.99))
    net(torch.ones(2, 4)).sum().backward()
    opt.step()
    return net, opt


def _run(tmp_path: Path, steps: int = 1,
         enc_key: bytes | None = None) -> tuple[ShardedStore, list[str]]:
    """A run directory with ``steps`` sharded checkpoints (step i holds weights filled with i)."""
    net, opt = _net_and_optimizer()
    mgr = ShardedStore(str(tmp_path / "run"), prefix="x", keep=5, enc_key=enc_key)
    paths = []
    for step in range(1, steps + 1):
        with torch.no_grad():
            net.weight.fill_(float(step))
        paths.append(mgr.save({"model": net.state_dict(), "optim": opt.state_dict()}, epoch=1, step=step,
                              rank_state={"rank": 0}, info={"global_step": step}) or "")
    mgr.wait()
    return mgr, paths


def _fresh_state() -> dict[str, Any]:
    net = nn.Linear(4, 3)
    return {"model": net.state_dict(), "optim": torch.optim.Adam(net.parameters(), lr=0.5).state_dict()}


def _edit_manifest(path: str, edit: Any, *, reseal: bool = True) -> None:
    """``edit`` the manifest of ``path``; ``reseal``: recompute its xxh3 digest as anyone can (unkeyed,
    docs/FORMAT.md 6c); an HMAC stays as it was (it needs the key)."""
    file = Path(path) / "manifest.json"
    doc = json.loads(file.read_text())
    edit(doc)
    if reseal and isinstance(doc.get("digest"), dict):
        body = json.dumps({k: v for k, v in doc.items() if k != "digest"}, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=True).encode()
        doc["digest"]["xxh3"] = xxhash.xxh3_64_hexdigest(body)
    file.chmod(0o600)
    file.write_text(json.dumps(doc))


def _edit_metadata(path: str, edit: Any) -> None:
    """``edit`` dcp_metadata.json of ``path``; its size and xxh3 in the manifest follow (resealed)."""
    file = Path(path) / "dcp_metadata.json"
    meta = json.loads(file.read_text())
    edit(meta)
    raw = json.dumps(meta, separators=(",", ":")).encode()
    file.chmod(0o600)
    file.write_bytes(raw)
    _edit_manifest(path, lambda doc: doc["info"]["dcp_metadata"].update(size=len(raw),
                                                                        xxh3=xxhash.xxh3_64_hexdigest(raw)))


def _every_reader(path: str, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    """What each reader says of checkpoint ``path`` (load, verify, convert, ls, inspect, restore):
    the error message, or 'ok' when it read the checkpoint."""
    from torchresume import load_checkpoint
    from torchresume.catalog import list_checkpoints
    from torchresume.cli.main import main
    from torchresume.files import verify

    out: dict[str, str] = {}
    try:
        load_checkpoint(path)
        out["load"] = "ok"
    except CorruptCheckpointError as exc:
        out["load"] = str(exc)
    verdict = verify(path)
    out["verify"] = "ok" if verdict.valid else verdict.reason
    entry = next(e for e in list_checkpoints(str(Path(path).parent), verify=False) if e.path == path)
    out["ls"] = "ok" if entry.valid else entry.reason
    capsys.readouterr()
    for command in ("convert", "inspect"):
        argv = ["convert", path, str(Path(path).parent.parent / "converted.ckpt")] if command == "convert" else \
            ["inspect", path]
        code = main(argv)
        err = capsys.readouterr().err
        out[command] = "ok" if code == 0 else err.strip()
    mgr = ShardedStore(str(Path(path).parent), prefix="x")
    try:
        mgr.restore(_fresh_state(), path=path)
        out["restore"] = "ok"
    except CorruptCheckpointError as exc:
        out["restore"] = str(exc)
    return out


# --- Issue 35 item 2: every name a sharded manifest gives stays inside the checkpoint. ---

@pytest.mark.parametrize("form", ["relative", "absolute"])
@pytest.mark.parametrize("kind", ["part", "rank part", "dcp_metadata.file"])
def test_a_name_leading_out_of_the_checkpoint_is_refused_by_every_reader(
        tmp_path: Path, kind: str, form: str, capsys: pytest.CaptureFixture[str]) -> None:
    _, (path,) = _run(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    doc = json.loads((Path(path) / "manifest.json").read_text())
    file = {"part": "shard-00000-0.safetensors", "rank part": doc["info"]["rank_parts"][0],
            "dcp_metadata.file": "dcp_metadata.json"}[kind]
    (Path(path) / file).rename(outside / file)  # the checkpoint's data now lives only outside it
    name = f"../../outside/{file}" if form == "relative" else str(outside / file)
    if kind == "part":  # the metadata follows too, so nothing but the name stands in the way
        _edit_metadata(path, lambda meta: [entry.update(file=name) for entry in meta["storage_data"]
                                           if entry["file"] == file])

    def rename(doc: dict[str, Any]) -> None:
        for part in doc["parts"]:
            part["file"] = name if part["file"] == file else part["file"]
        doc["info"]["rank_parts"] = [name if f == file else f for f in doc["info"]["rank_parts"]]
        if kind == "dcp_metadata.file":
            doc["info"]["dcp_metadata"]["file"] = name
    _edit_manifest(path, rename)

    said = _every_reader(path, capsys)
    for reader, message in said.items():
        assert f"names the file {name!r}, which leads outside it" in message, (reader, message)
    assert not (tmp_path / "converted.ckpt").exists()


# --- Issue 35 item 4: what the manifest means is covered by a digest (an HMAC with the key). ---

def test_a_changed_step_in_the_manifest_is_refused_by_every_reader(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, (path,) = _run(tmp_path)
    _edit_manifest(path, lambda doc: doc["info"].update(step=7), reseal=False)  # 6 -> 7, one bit: no digest kept up
    said = _every_reader(path, capsys)
    for reader, message in said.items():
        assert "manifest.json: does not match its digest; the manifest (step, epoch, info or part list) is " \
               "damaged or was changed" in message, (reader, message)


def test_a_restore_passes_over_a_changed_manifest_and_a_save_replaces_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mgr, (older, newest) = _run(tmp_path, steps=2)
    _edit_manifest(newest, lambda doc: doc["info"].update(epoch=9), reseal=False)
    capsys.readouterr()
    found = mgr.restore(_fresh_state())
    assert found is not None and found.path == older
    assert f"skipping invalid checkpoint {newest}/manifest.json: does not match its digest" in capsys.readouterr().err
    net, opt = _net_and_optimizer()
    assert mgr.save({"model": net.state_dict(), "optim": opt.state_dict()}, epoch=1, step=2) == newest
    mgr.wait()
    assert f"{newest} is the damaged checkpoint the restore passed over; replacing it" in capsys.readouterr().err
    assert json.loads((Path(newest) / "manifest.json").read_text())["info"]["epoch"] == 1


@pytest.mark.parametrize("field", ["step", "epoch", "global_step"])
def test_an_encrypted_manifest_changed_without_the_key_does_not_authenticate(tmp_path: Path, field: str) -> None:
    from torchresume import load_checkpoint
    mgr, (path,) = _run(tmp_path, enc_key=KEY)
    assert load_checkpoint(path, dec_key=KEY) is not None
    _edit_manifest(path, lambda doc: doc["info"].update({field: 7}))  # xxh3 recomputed: it is unkeyed
    expected = ("manifest.json: does not authenticate with the checkpoint's key; the manifest (step, epoch, "
                "info or part list) was changed")
    with pytest.raises(CorruptCheckpointError, match=re.escape(expected)):
        load_checkpoint(path, dec_key=KEY)
    with pytest.raises(CorruptCheckpointError, match=re.escape(expected)):
        mgr.restore(_fresh_state(), path=path)
    with pytest.raises(DamagedRunError, match="the newest: does not authenticate with the checkpoint's key"):
        mgr.restore(_fresh_state())  # the only checkpoint, passed over


def test_verify_checks_every_part_header(tmp_path: Path) -> None:
    """One flipped byte in a part's header outside any chunk's bytes (its JSON): verify fails."""
    from torchresume.files import verify
    _, (path,) = _run(tmp_path)
    part = Path(path) / "shard-00000-0.safetensors"
    raw = bytearray(part.read_bytes())
    at = raw.index(b'"__metadata__"') + 2  # inside the header's JSON, a byte of a key's name
    raw[at] ^= 0x01
    part.chmod(0o600)
    part.write_bytes(bytes(raw))
    verdict = verify(path)
    assert not verdict.valid
    assert verdict.reason.endswith("shard-00000-0.safetensors: header differs from the one the manifest "
                                   "recorded; the part was replaced or damaged")


def test_a_checkpoint_written_before_the_digest_still_loads_with_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from torchresume import load_checkpoint
    from torchresume.files import read_checkpoint, verify
    path = str(shutil.copytree(V1 / "plain" / "x-1_6.ckpt", tmp_path / "run" / "x-1_6.ckpt"))
    weight = torch.arange(12.0).view(3, 4) / 10 - 0.01  # what make.py saved: one Adam step (lr 0.01) after
    assert torch.allclose(load_checkpoint(path)["weight"], weight)
    tree = read_checkpoint(path).tree
    assert tree["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)  # DCP's pickle, loaded once checked
    assert verify(path).valid
    state = _fresh_state()
    found = ShardedStore(str(tmp_path / "run"), prefix="x").restore(state)
    assert found is not None and found.step == 6 and found.rank_state == {"note": "rank zero", "n": 3}
    assert torch.allclose(state["model"]["bias"], torch.tensor([0.5, -0.5, 1.5]) - 0.01)
    err = capsys.readouterr().err
    line = (f"torchresume: {path} carries no manifest digest (written before torchresume 0.3): its step, epoch "
            "and part list are not checked; save again to protect them")
    assert err.count(line) == 1, err
    encrypted = str(shutil.copytree(V1 / "encrypted" / "x-1_6.ckpt", tmp_path / "enc" / "x-1_6.ckpt"))
    assert torch.allclose(load_checkpoint(encrypted, dec_key=KEY)["weight"], weight)


def test_a_manifest_stripped_of_its_digest_is_refused(tmp_path: Path) -> None:
    from torchresume import load_checkpoint
    _, (path,) = _run(tmp_path)
    _edit_manifest(path, lambda doc: doc.pop("digest"), reseal=False)
    with pytest.raises(CorruptCheckpointError, match="manifest.json: version 2 without its digest"):
        load_checkpoint(path)


# --- Issue 35 item 5: the chunks of a tensor tile it exactly. ---

def test_overlapping_chunks_that_leave_rows_uncovered_are_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Rows 0-255 and 128-383 of a 512x512 weight: as many elements as the weight, rows 384-511 from no chunk."""
    from torchresume.files.directory import PART_SUFFIX
    from torchresume.files.directory import write_part as write
    weight = torch.arange(512 * 512, dtype=torch.float32).view(512, 512)
    mgr = ShardedStore(str(tmp_path / "run"), prefix="x")
    path = mgr.save({"model": {"w": weight}}, epoch=1, step=1) or ""
    spans: dict[str, Any] = {}
    record = write(path, "shard-00000-9", "tensors", {"model.w@0,0": weight[:256].clone(),
                                                      "model.w@128,0": weight[128:384].clone()}, spans=spans)

    def two_chunks(meta: dict[str, Any]) -> None:
        meta["state_dict_metadata"]["model.w"]["chunks"] = [[[0, 0], [256, 512]], [[128, 0], [256, 512]]]
        meta["storage_data"] = [{"fqn": "model.w", "offset": offsets, "index": 0, "file": record.file, "name": name,
                                 "at": list(spans[name][:2]), "xxh3": f"{spans[name][2]:016x}"}
                                for name, offsets in (("model.w@0,0", [0, 0]), ("model.w@128,0", [128, 0]))]
    _edit_manifest(path, lambda doc: doc["parts"].append(
        {"file": record.file, "size": record.size, "header_xxh3": record.header_xxh3, "encrypted": False}))
    _edit_metadata(path, two_chunks)
    assert record.file == "shard-00000-9" + PART_SUFFIX
    said = _every_reader(path, capsys)
    assert said.pop("ls") == "ok"  # ls reads manifests alone; what it lists, it does not load
    for reader, message in said.items():
        assert "dcp_metadata.json: the saved chunks of model.w overlap (at [128, 0] and [0, 0]): some elements " \
               "come from no chunk; the checkpoint is damaged" in message, (reader, message)


# --- Issue 35 item 6: a sharded restore passes over every damage the reader finds. ---

def _missing_part(path: str) -> None:
    (Path(path) / "shard-00000-0.safetensors").unlink()


def _flipped_metadata(path: str) -> None:
    file = Path(path) / "dcp_metadata.json"
    raw = bytearray(file.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    file.chmod(0o600)
    file.write_bytes(bytes(raw))


def _flipped_header(path: str) -> None:
    """A byte of the header of the part holding the non-tensor values (a restore reads that header;
    a part it reads chunks from alone is checked chunk by chunk, and whole by verify)."""
    meta = json.loads((Path(path) / "dcp_metadata.json").read_text())
    part = Path(path) / next(e["file"] for e in meta["storage_data"] if e.get("value"))
    raw = bytearray(part.read_bytes())
    raw[raw.index(b'"__metadata__"') + 2] ^= 0x01
    part.chmod(0o600)
    part.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", [_missing_part, _flipped_metadata, _flipped_header],
                         ids=["missing part", "flipped dcp_metadata.json", "flipped part header"])
def test_a_sharded_restore_passes_over_damage_and_a_save_replaces_it(
        tmp_path: Path, one_rank_group: None, damage: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """Under a process group (torchrun's code path, one rank). A restore through one manager and the
    save through another, as the trainer does: the save of the passed-over step replaces it."""
    mgr, (older, newest) = _run(tmp_path, steps=2)
    damage(newest)
    capsys.readouterr()
    found = ShardedStore(str(tmp_path / "run"), prefix="x").restore(_fresh_state())
    assert found is not None and found.path == older
    err = capsys.readouterr().err
    assert err.count(f"skipping invalid checkpoint {newest}") == 1 and "Traceback" not in err, err
    net, opt = _net_and_optimizer()
    assert mgr.save({"model": net.state_dict(), "optim": opt.state_dict()}, epoch=1, step=2) == newest
    mgr.wait()
    assert f"{newest} is the damaged checkpoint the restore passed over; replacing it" in capsys.readouterr().err
    again = ShardedStore(str(tmp_path / "run"), prefix="x").restore(_fresh_state())
    assert again is not None and again.path == newest
    mgr.close()


# --- Issue 34 item 7: no pickle in a sharded checkpoint; non-tensor values are typed JSON. ---

def test_non_tensor_values_are_typed_json_not_pickles(tmp_path: Path) -> None:
    from torchresume.files import read_checkpoint
    _, opt = _net_and_optimizer()
    _, (path,) = _run(tmp_path)
    for record in json.loads((Path(path) / "manifest.json").read_text())["parts"]:
        tree = read_part(path, record)
        assert not [n for n, v in tree.items() if isinstance(v, torch.Tensor) and v.dtype == torch.uint8], record
    meta = json.loads((Path(path) / "dcp_metadata.json").read_text())
    assert meta["version"] == 2 and any(entry.get("value") for entry in meta["storage_data"])
    state = _fresh_state()
    ShardedStore(str(tmp_path / "run"), prefix="x").restore(state)
    saved = opt.state_dict()["param_groups"]
    restored = state["optim"]["param_groups"]
    assert [{k: v for k, v in g.items() if k != "params"} for g in restored] == \
        [{k: v for k, v in g.items() if k != "params"} for g in saved]
    assert restored[0]["betas"] == (0.8, 0.99) and type(restored[0]["betas"]) is tuple  # types kept, as in one file
    assert read_checkpoint(path).tree["optimizer"]["param_groups"][0]["betas"] == (0.8, 0.99)
