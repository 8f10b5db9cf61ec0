"""Directory checkpoints: parts written by separate processes, committed by a manifest written last."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import torchresume as tr
from torchresume import catalog, files
from torchresume.cli.main import main
from torchresume.files import directory
from torchresume.files.directory import PartRecord

WRITER = textwrap.dedent("""
    import json, sys, torch
    from torchresume.files import write_part
    where, rank = sys.argv[1], int(sys.argv[2])
    torch.manual_seed(rank)
    record = write_part(where, f"rank{rank}", "train_state", {f"rank{rank}": {"w": torch.randn(64, 8), "step": 7}})
    print(json.dumps(record.__dict__))
""")


def write_by_two_processes(path: str) -> list[PartRecord]:
    """Two real processes write one part each, as two ranks would; the caller commits."""
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, path, str(rank)], stdout=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    return [PartRecord(**json.loads(out)) for out in outs]


def test_parts_are_invisible_until_the_manifest_commits(root) -> None:
    path = root.rstrip("/") + "/run-1_10.ckpt"
    records = write_by_two_processes(path)
    assert catalog.list_checkpoints(root) == []  # parts without a manifest are no checkpoint
    directory.commit_directory(path, records, info={"epoch": 1, "step": 10, "global_step": 10})
    [entry] = catalog.list_checkpoints(root)
    assert (entry.name, entry.valid, entry.is_dir, entry.global_step) == ("run-1_10.ckpt", True, True, 10)
    assert entry.size == sum(r.size for r in records)
    ckpt = files.read_checkpoint(path)
    assert set(ckpt.tree) == {"rank0", "rank1"} and ckpt.tree["rank1"]["step"] == 7
    torch.manual_seed(1)
    assert torch.equal(ckpt.tree["rank1"]["w"], torch.randn(64, 8))
    flat = tr.load_checkpoint(path)
    assert flat["rank0.w"].shape == (64, 8)


def test_missing_or_replaced_part_is_invalid(tmp_path) -> None:
    path = str(tmp_path / "run-1_10.ckpt")
    records = write_by_two_processes(path)
    directory.commit_directory(path, records)
    os.chmod(os.path.join(path, "rank1.safetensors"), 0o600)
    os.remove(os.path.join(path, "rank1.safetensors"))
    verdict = files.verify(path)
    assert not verdict.valid and "rank1.safetensors: no such checkpoint file" in verdict.reason
    tr.save_checkpoint({"rank1": {"w": torch.zeros(64, 8), "step": 7}}, os.path.join(path, "rank1.safetensors"))
    verdict = files.verify(path)
    assert not verdict.valid
    assert "the manifest says" in verdict.reason or "differs from the one the manifest recorded" in verdict.reason


def test_cli_on_a_directory_checkpoint(tmp_path, capsys) -> None:
    run = str(tmp_path / "run")
    for step in (10, 20):
        path = os.path.join(run, f"net-1_{step}.ckpt")
        directory.commit_directory(path, write_by_two_processes(path), info={"epoch": 1, "step": step,
                                                                              "global_step": step})
    assert main(["ls", run]) == 0
    out = capsys.readouterr().out
    assert out.index("net-1_20.ckpt") < out.index("net-1_10.ckpt") and out.count("valid") == 2
    assert main(["verify", run]) == 0
    assert main(["inspect", os.path.join(run, "net-1_20.ckpt")]) == 0
    out = capsys.readouterr().out
    assert "torchresume-directory" in out and "rank0.w" in out
    # Same seeds, same parts: the tensors are equal, the headers (step, time) are not: exit 1.
    assert main(["diff", os.path.join(run, "net-1_10.ckpt"), os.path.join(run, "net-1_20.ckpt")]) == 1
    out = capsys.readouterr().out
    assert out.endswith("same tensors and values; metadata differs\n") and "~ info.step  10 -> 20" in out, out
    assert main(["convert", os.path.join(run, "net-1_20.ckpt"), str(tmp_path / "one.ckpt")]) == 0
    assert torch.equal(tr.load_checkpoint(str(tmp_path / "one.ckpt"))["rank1.w"],
                       tr.load_checkpoint(os.path.join(run, "net-1_20.ckpt"))["rank1.w"])
    assert main(["prune", run, "--keep", "1"]) == 0
    assert sorted(os.listdir(run)) == ["net-1_20.ckpt"]


def test_manifest_damage_is_typed(tmp_path) -> None:
    path = str(tmp_path / "x-1_1.ckpt")
    records = write_by_two_processes(path)
    directory.commit_directory(path, records)
    manifest = os.path.join(path, directory.MANIFEST)
    os.chmod(manifest, 0o600)
    with open(manifest, "w") as f:
        f.write("{not json")
    with pytest.raises(tr.CorruptCheckpointError, match=r"x-1_1.ckpt/manifest.json: the manifest is not valid JSON "
                                                        r"\(Expecting property name"):
        files.read_checkpoint(path)
