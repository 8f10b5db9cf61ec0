"""Issue 35 review: sealed directory manifests (plain and sharded) and the sharded metadata's schema.

What someone without the key changes in an encrypted sharded checkpoint (clearing the parts'
``encrypted`` flags, setting the manifest back to version 1) is refused by a reader with the key;
every sharded JSON is read by the one typed parser and schema; chunk coverage costs n log n;
a symbolic link in place of the checkpoint being saved never makes the save skip; a plain directory
checkpoint's manifest is sealed as a sharded one's is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import xxhash

from tests.attacks.test_hostile_sharded import (
    KEY,
    _edit_manifest,
    _edit_metadata,
    _fresh_state,
    _net_and_optimizer,
    _run,
)
from torchresume import load_checkpoint
from torchresume.distributed import ShardedStore
from torchresume.errors import CorruptCheckpointError
from torchresume.files import directory, read_checkpoint, verify
from torchresume.files.sharded import check_coverage

# --- item 1: an encrypted manifest whose parts say "not encrypted" ---

def test_clearing_the_encrypted_flags_does_not_skip_the_hmac(tmp_path: Path) -> None:
    mgr, (path,) = _run(tmp_path, enc_key=KEY)

    def edit(doc: dict[str, Any]) -> None:
        for part in doc["parts"]:
            part["encrypted"] = False
        doc["info"]["step"] = 7
    _edit_manifest(path, edit)  # its xxh3 recomputed (anyone can); the HMAC stays
    want = (f"{path}/manifest.json: does not authenticate with the checkpoint's key; the manifest (step, epoch, "
            "info or part list) was changed")
    with pytest.raises(CorruptCheckpointError) as err:
        load_checkpoint(path, dec_key=KEY)
    assert str(err.value) == want
    with pytest.raises(CorruptCheckpointError, match="does not authenticate with the checkpoint's key"):
        mgr.restore(_fresh_state(), path=path)


def test_a_part_whose_encryption_differs_from_its_record_is_refused(tmp_path: Path) -> None:
    from torchresume.files.sharded_reader import read_part
    _, (path,) = _run(tmp_path, enc_key=KEY)
    doc = json.loads((Path(path) / "manifest.json").read_text())
    part = {**doc["parts"][0], "encrypted": False}
    with pytest.raises(CorruptCheckpointError) as err:
        read_part(path, part, dec_key=KEY)
    assert str(err.value) == (f"{path}: part {part['file']} is encrypted, its manifest record says otherwise; "
                              "the manifest was changed")


# --- item 2: an encrypted v2 manifest set back to version 1 ---

@pytest.mark.parametrize("field", ["none", "step"])
def test_an_encrypted_manifest_set_back_to_version_1_is_refused_with_the_key(tmp_path: Path, field: str) -> None:
    mgr, (path,) = _run(tmp_path, enc_key=KEY)

    def edit(doc: dict[str, Any]) -> None:
        doc["version"] = 1
        doc.pop("digest")
        if field == "step":
            doc["info"]["step"] = 7
    _edit_manifest(path, edit, reseal=False)
    want = f"{path}/manifest.json: sharded_version 1, but rank part rank-00000.safetensors was written for 2; " \
           "the manifest was changed"
    with pytest.raises(CorruptCheckpointError) as err:
        load_checkpoint(path, dec_key=KEY)
    assert str(err.value) == want
    with pytest.raises(CorruptCheckpointError, match="was written for 2; the manifest was changed"):
        mgr.restore(_fresh_state(), path=path)


def test_an_encrypted_manifest_given_another_step_without_its_seal_is_refused(tmp_path: Path) -> None:
    """Version 2 kept, the step changed: its rank part (authenticated) says the step it was saved at."""
    from torchresume.files.sharded import check_rank_info
    _, (path,) = _run(tmp_path, enc_key=KEY)
    doc = json.loads((Path(path) / "manifest.json").read_text())
    doc["info"]["step"] = 7
    with pytest.raises(CorruptCheckpointError, match="step 7, but rank part r.safetensors was written for 1"):
        check_rank_info(path, "r.safetensors", doc, {"sharded_version": 2, "step": 1, "epoch": 1})


# --- item 3: every sharded JSON through the one typed parser and schema ---

def _forge_metadata(path: str, raw: bytes) -> None:
    file = Path(path) / "dcp_metadata.json"
    file.chmod(0o600)
    file.write_bytes(raw)
    _edit_manifest(path, lambda d: d["info"]["dcp_metadata"].update(size=len(raw), xxh3=xxhash.xxh3_64_hexdigest(raw)))


def test_deeply_nested_metadata_is_passed_over_by_the_restore(tmp_path: Path) -> None:
    mgr, (older, path) = _run(tmp_path, steps=2)
    _forge_metadata(path, b"[" * 100000)
    want = f"{path}/dcp_metadata.json: the DCP metadata nests JSON too deeply; the file is damaged or hostile"
    with pytest.raises(CorruptCheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value) == want
    assert verify(path).reason == want
    found = mgr.restore(_fresh_state())
    assert found is not None and found.path == older


def _set_first_storage(key: str, value: Any) -> Any:
    return lambda meta: meta["storage_data"][0].__setitem__(key, value)


def _set_first_tensor(key: str, value: Any) -> Any:
    def edit(meta: dict[str, Any]) -> None:
        md = next(v for v in meta["state_dict_metadata"].values() if not v.get("bytes"))
        md[key] = value
    return edit


def _drop_first_storage(key: str) -> Any:
    return lambda meta: meta["storage_data"][0].pop(key)


@pytest.mark.parametrize(("edit", "fault"), [
    (_set_first_storage("file", {"a": 1}), "storage record 0 has no fqn, file or name string"),
    (_drop_first_storage("file"), "storage record 0 has no fqn, file or name string"),
    (_set_first_storage("at", [0, "x"]), "storage record 0 has a byte range 'at' that is not two integers"),
    (_set_first_tensor("chunks", -1), "has chunks that are not [offsets, sizes] lists of integers"),
    (_set_first_tensor("size", "F32"), "has no valid requires_grad or size"),
    (_set_first_tensor("chunks", [[[0], [1], [2]]]), "has chunks that are not [offsets, sizes] lists of integers"),
    (lambda meta: meta.pop("storage_data"), "it has no state_dict_metadata object or storage_data list"),
], ids=["dict-file", "no-file", "at-string", "chunks-int", "size-string", "chunk-fields", "no-storage"])
def test_forged_metadata_is_a_typed_error_naming_the_fault(tmp_path: Path, edit: Any, fault: str) -> None:
    _, (path,) = _run(tmp_path)
    _edit_metadata(path, edit)
    with pytest.raises(CorruptCheckpointError) as err:
        load_checkpoint(path)
    assert fault in str(err.value), str(err.value)
    assert str(err.value).startswith(f"{path}/dcp_metadata.json: ")


def test_a_5000_digit_number_in_the_metadata_is_a_typed_error(tmp_path: Path) -> None:
    _, (path,) = _run(tmp_path)
    raw = (Path(path) / "dcp_metadata.json").read_bytes().replace(b'"at":[', b'"at":[' + b"9" * 5000 + b",", 1)
    _forge_metadata(path, raw)
    with pytest.raises(CorruptCheckpointError, match="the DCP metadata holds a value JSON cannot be read as"):
        load_checkpoint(path)


@pytest.mark.parametrize(("edit", "fault"), [
    (lambda doc: doc["info"].update(rank_parts=[[-1, 4]]), "which is not a file name"),
    (lambda doc: doc["info"]["rank_parts"].pop(0), "lists no rank parts"),
    (lambda doc: doc["info"].update(world_size=2), "world_size 2 is not the number of its rank parts (1)"),
    (lambda doc: doc["info"]["dcp_metadata"].update(size="7"), "the DCP metadata file's record has no valid size"),
    (lambda doc: doc["parts"][0].update(size=[1]), "has no valid 'size'"),
], ids=["rank-part-list", "rank-part-dropped", "world-size", "metadata-size", "part-size"])
def test_a_forged_sharded_manifest_is_a_typed_error(tmp_path: Path, edit: Any, fault: str) -> None:
    _, (path,) = _run(tmp_path)
    _edit_manifest(path, edit)
    with pytest.raises(CorruptCheckpointError) as err:
        load_checkpoint(path)
    assert fault in str(err.value), str(err.value)


def test_a_sharded_manifest_stripped_of_its_layout_does_not_load_as_a_plain_directory(tmp_path: Path) -> None:
    _, (path,) = _run(tmp_path)
    _edit_manifest(path, lambda doc: doc.update(info={}))
    with pytest.raises(CorruptCheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value) == (f"{path}: part rank-00000.safetensors is a sharded checkpoint's rank part, but the "
                              "manifest does not say the layout is sharded; the manifest was changed")


def test_a_5000_digit_world_size_is_a_typed_error(tmp_path: Path) -> None:
    _, (path,) = _run(tmp_path)
    file = Path(path) / "manifest.json"
    file.chmod(0o600)
    file.write_text(file.read_text().replace('"world_size": 1', '"world_size": ' + "9" * 5000))
    with pytest.raises(CorruptCheckpointError, match="the manifest holds a value JSON cannot be read as"):
        load_checkpoint(path)


# --- item 4: coverage of column-sharded chunks ---

def test_column_sharded_coverage_compares_each_chunk_with_few_others(monkeypatch: pytest.MonkeyPatch) -> None:
    """Counted, not timed: 2000 chunks of one column each take a few ``all`` calls per chunk (the
    overlap sweep along dimension 0 compared every pair: ~n^2/2)."""
    import torchresume.files.sharded as sharded
    calls = 0

    def counting(values: Any) -> bool:
        nonlocal calls
        calls += 1
        return all(values)
    monkeypatch.setattr(sharded, "all", counting, raising=False)
    n = 2000
    check_coverage("p", "w", [1, n], [[[0, i], [1, 1]] for i in range(n)])
    assert calls < 10 * n
    with pytest.raises(CorruptCheckpointError, match=r"overlap \(at \[0, 1\] and \[0, 0\]\)"):
        check_coverage("p", "w", [1, 4], [[[0, 0], [1, 2]], [[0, 1], [1, 2]]])


# --- item 5: a link in place of the checkpoint being saved ---

def test_a_link_in_place_of_the_checkpoint_is_replaced_not_kept(tmp_path: Path) -> None:
    net, _ = _net_and_optimizer()
    other = ShardedStore(str(tmp_path / "other"), prefix="x", keep=5)
    target = other.save({"model": net.state_dict()}, epoch=1, step=2) or ""
    other.wait()
    (tmp_path / "run").mkdir()
    os.symlink(target, tmp_path / "run" / "x-1_2.ckpt")
    mgr = ShardedStore(str(tmp_path / "run"), prefix="x", keep=5)
    with torch.no_grad():
        net.weight.fill_(5.0)
    mgr.save({"model": net.state_dict()}, epoch=1, step=1)
    mgr.wait()
    path = mgr.save({"model": net.state_dict()}, epoch=1, step=2)
    mgr.wait()
    assert path is not None and not os.path.islink(path)
    assert sorted(e.step for e in mgr.checkpoints()) == [1, 2]
    assert os.path.exists(Path(target) / "manifest.json")  # the link's target untouched
    state = {"model": torch.nn.Linear(4, 3).state_dict()}
    found = mgr.restore(state)
    assert found is not None and found.step == 2
    assert torch.equal(state["model"]["weight"], torch.full((3, 4), 5.0))


# --- item 7: a plain directory checkpoint's manifest is sealed ---

def _plain(tmp_path: Path, enc_key: bytes | None = None) -> str:
    d = tmp_path / "net-1_1.ckpt"
    d.mkdir()
    part = directory.write_part(str(d), "rank0", "state", {"w": torch.ones(2)}, enc_key=enc_key)
    directory.commit_directory(str(d), [part], info={"step": 1}, append={"lr": 0.1}, enc_key=enc_key)
    return str(d)


def _edit_plain(path: str, edit: Any) -> None:
    file = Path(path) / "manifest.json"
    doc = json.loads(file.read_text())
    edit(doc)
    file.chmod(0o600)
    file.write_text(json.dumps(doc))


def test_a_changed_plain_directory_manifest_is_refused(tmp_path: Path) -> None:
    path = _plain(tmp_path)
    assert read_checkpoint(path).info["step"] == 1
    _edit_plain(path, lambda doc: (doc["info"].update(step=7), doc["append"].update(lr=100.0)))
    want = (f"{path}/manifest.json: does not match its digest; the manifest (step, epoch, info or part list) is "
            "damaged or was changed")
    with pytest.raises(CorruptCheckpointError) as err:
        read_checkpoint(path)
    assert str(err.value) == want
    assert verify(path).reason == want


def test_an_encrypted_plain_directory_manifest_changed_without_the_key_does_not_authenticate(tmp_path: Path) -> None:
    from tests.attacks.test_hostile_sharded import _edit_manifest as reseal_edit
    path = _plain(tmp_path, enc_key=KEY)
    assert read_checkpoint(path, dec_key=KEY).info["step"] == 1
    reseal_edit(path, lambda doc: doc["info"].update(step=7))
    with pytest.raises(CorruptCheckpointError, match="does not authenticate with the checkpoint's key"):
        read_checkpoint(path, dec_key=KEY)


def test_an_unsealed_plain_directory_still_loads_with_one_line(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = _plain(tmp_path)
    _edit_plain(path, lambda doc: (doc.update(version=1), doc.pop("digest")))
    assert read_checkpoint(path).info["step"] == 1
    assert read_checkpoint(path).append["lr"] == 0.1
    err = capsys.readouterr().err
    assert err.count(f"{path} carries no manifest digest (written before torchresume 0.3)") == 1, err


def test_committing_encrypted_parts_without_their_key_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "net-1_1.ckpt"
    d.mkdir()
    part = directory.write_part(str(d), "rank0", "state", {"w": torch.ones(2)}, enc_key=KEY)
    with pytest.raises(ValueError, match="the parts are encrypted: pass their enc_key to commit_directory"):
        directory.commit_directory(str(d), [part])


def test_a_manifest_linked_to_itself_is_a_typed_error(tmp_path: Path) -> None:
    """Found by the fuzz harness (directory, seed 0): an ``OSError`` (ELOOP) from the presence check."""
    from torchresume.errors import UnsafePathError
    path = _plain(tmp_path)
    manifest = Path(path) / "manifest.json"
    manifest.unlink()
    os.symlink(manifest, manifest)
    with pytest.raises(UnsafePathError, match="manifest.json"):
        read_checkpoint(path)
    assert not verify(path).valid


def test_a_metadata_file_said_to_be_over_1_gib_is_refused_before_it_is_read(tmp_path: Path) -> None:
    _, (path,) = _run(tmp_path)
    _edit_manifest(path, lambda doc: doc["info"]["dcp_metadata"].update(size=(1 << 30) + 1))
    with pytest.raises(CorruptCheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value) == (f"{path}/dcp_metadata.json: the manifest says {(1 << 30) + 1} bytes, more than a "
                              f"DCP metadata file holds ({1 << 30}); the manifest is damaged")


def test_a_lone_surrogate_in_a_manifest_is_one_typed_line_from_inspect(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A lone surrogate (``"\\ud800"``) parsed, then printed by inspect: a UnicodeEncodeError before."""
    from torchresume.cli.main import main
    _, (path,) = _run(tmp_path)
    _edit_manifest(path, lambda doc: doc["info"].update(note="\ud800x"))
    capsys.readouterr()
    assert main(["inspect", path]) == 1
    assert capsys.readouterr().err == (f"torchresume: error: {path}/manifest.json: the manifest holds a lone UTF-16 "
                                       "surrogate (\\ud800-\\udfff) in a string; the file is damaged or hostile\n")
