"""The installed CLI on a sharded checkpoint written by torchrun: ls, verify, inspect, diff, convert."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.distributed.conftest import Launch, torchrun
from torchresume.files import seal

CLI = str(Path(sys.executable).with_name("torchresume"))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Launch, Path]:
    root = tmp_path_factory.mktemp("cli")
    launch = torchrun(2, "fsdp_save", root / "ckpt", root / "out")
    assert launch.returncode == 0, launch.output
    return launch, root


def test_ls_verify_inspect(sharded: tuple[Launch, Path]) -> None:
    launch, root = sharded
    path = launch.results[0]["path"]
    ls = cli("ls", str(root / "ckpt"), "--json")
    assert ls.returncode == 0, ls.stderr
    (entry,) = json.loads(ls.stdout)
    assert (entry["name"], entry["epoch"], entry["step"], entry["valid"]) == ("fsdp-1_2.ckpt", 1, 2, True)
    ok = cli("verify", path)
    assert (ok.returncode, ok.stdout.strip()) == (0, f"OK       {path}")
    inspect = cli("inspect", path)
    assert inspect.returncode == 0, inspect.stderr
    assert "layout:       torchresume-dcp" in inspect.stdout and "world_size:   2" in inspect.stdout
    assert "model.fc1.weight@8,0" in inspect.stdout  # the second rank's rows of fc1.weight
    assert "sharded:      6 logical tensors over 2 ranks (DCP metadata)" in inspect.stdout
    assert any(line.split() == ["model.fc1.weight", "float32", "[16,", "6]", "in", "2", "chunk(s)"]
               for line in inspect.stdout.splitlines())


def test_verify_finds_a_missing_shard_and_a_damaged_metadata_file(sharded: tuple[Launch, Path],
                                                                  tmp_path: Path) -> None:
    launch, _ = sharded
    bad = tmp_path / "fsdp-1_2.ckpt"
    shutil.copytree(launch.results[0]["path"], bad)
    bad.chmod(0o755)
    manifest = bad / "manifest.json"
    manifest.chmod(0o644)
    doc = json.loads(manifest.read_text())
    doc["parts"] = [p for p in doc["parts"] if p["file"] != "shard-00001-0.safetensors"]
    manifest.write_text(json.dumps(doc))
    changed = cli("verify", str(bad))
    assert changed.returncode == 1
    assert "manifest.json: does not match its digest; the manifest (step, epoch, info or part list) is damaged " \
        "or was changed" in changed.stdout
    manifest.write_text(json.dumps(seal.sealer(None)(doc)))  # its digest recomputed (xxh3: anyone can)
    missing = cli("verify", str(bad))
    assert missing.returncode == 1
    assert "in shard-00001-0.safetensors, which the committed parts do not hold; a shard is missing" \
        in missing.stdout
    meta = bad / "dcp_metadata.json"
    meta.chmod(0o644)
    meta.write_text(meta.read_text().replace('"fc1.weight', '"fc9.weight', 1))
    damaged = cli("verify", str(bad))
    assert damaged.returncode == 1
    assert "dcp_metadata.json: does not match the size and digest in the manifest" in damaged.stdout


def test_convert_consolidates_and_stock_safetensors_loads_it(sharded: tuple[Launch, Path], tmp_path: Path) -> None:
    launch, root = sharded
    out = tmp_path / "full.ckpt"
    conv = cli("convert", launch.results[0]["path"], str(out))
    assert conv.returncode == 0, conv.stderr
    assert "consolidated from 2 ranks' shards" in conv.stdout
    loaded = load_file(str(out))  # stock safetensors
    expected = torch.load(root / "out" / "expected.pt")
    assert sorted(loaded) == sorted(expected)  # weights at the top level; rank states are ints: metadata
    for k, v in expected.items():
        assert torch.equal(loaded[k], v), k
    same = cli("diff", launch.results[0]["path"], str(out))
    assert (same.returncode, same.stdout.strip()) == (0, "identical: same tensors, values and metadata")
