"""DDP-style replicated state saved at 2 ranks, restored at 2 in a new launch: bitwise equal."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open

from tests.distributed.conftest import torchrun


def test_ddp_save_restore_bitwise(tmp_path: Path) -> None:
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    saved = torchrun(2, "ddp_save", ckpt, out)
    assert saved.returncode == 0, saved.output
    path = saved.results[0]["path"]
    assert saved.results[0]["newest"] == saved.results[1]["newest"] == path
    assert saved.results[0]["kept"] == ["ddp-1_1.ckpt", "ddp-1_2.ckpt"]  # keep=2 after the third commit
    assert sorted(p.name for p in (ckpt).iterdir()) == ["ddp-1_1.ckpt", "ddp-1_2.ckpt"]

    manifest = json.loads((Path(path) / "manifest.json").read_text())
    files = [p["file"] for p in manifest["parts"]]
    assert sorted(f for f in files if f.startswith("rank-")) == ["rank-00000.safetensors", "rank-00001.safetensors"]
    names: list[str] = []
    for f in files:
        with safe_open(str(Path(path) / f), "pt") as sf:  # stock safetensors reads every part
            names += list(sf.keys())
    weights = [n for n in names if n.startswith("model.")]
    assert sorted(weights) == sorted(set(weights))  # each replicated tensor written once
    assert "model.module.fc1.weight" in weights

    restored = torchrun(2, "ddp_restore", ckpt, out)
    assert restored.returncode == 0, restored.output
    for r in (0, 1):
        res = restored.results[r]
        assert (res["epoch"], res["step"], res["world_size"], res["path"]) == (1, 2, 2, path)
        assert res["model_equal"] and res["optim_equal"], res
        assert res["rank_states_equal"] == [True, True]
