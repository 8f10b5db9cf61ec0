"""4 -> 2 ranks mid-epoch under real torchrun: every sample index is trained on exactly once."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from tests.distributed.launch import WORKER, committed, manifest_info, run, torchrun_cmd
from torchresume import load_checkpoint


def _seen(log_dir: Path, world: int) -> list[int]:
    out: list[int] = []
    for log in sorted(log_dir.glob(f"rank*-ws{world}.log")):
        out += [int(i) for line in log.read_text().splitlines() for i in line.split()]
    return out


def test_stop_at_4_ranks_resume_at_2_sees_every_index_once(tmp_path: Path) -> None:
    first = run(torchrun_cmd(4, [WORKER, "--dir", str(tmp_path), "--term-at", "4"]), tmp_path)
    assert first.returncode != 0  # the ranks exit 143 after the agreed stop
    assert "SIGTERM at epoch 1 step 5; checkpoint" in first.stderr, first.stderr[-3000:]
    [saved] = committed(tmp_path / "ckpt", "el")
    assert saved.name == "el-1_5.ckpt" and manifest_info(saved)["world_size"] == 4
    before = _seen(tmp_path, 4)
    assert len(before) == 5 * 8  # 5 steps of a global batch of 8, over 4 ranks

    second = run(torchrun_cmd(2, [WORKER, "--dir", str(tmp_path)]), tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stdout and "at epoch 1, step 5 (global step 5)" in second.stdout
    after = _seen(tmp_path, 2)
    assert len(after) == 7 * 8
    assert Counter(before + after) == Counter(range(96))
    newest = committed(tmp_path / "ckpt", "el")[-1]
    assert newest.name == "el-1_12.ckpt" and manifest_info(newest)["world_size"] == 2
    full = tmp_path / "full.ckpt"  # one native file from the shards, every rank's state inside
    converted = run([sys.executable, "-m", "torchresume", "convert", str(newest), str(full)], tmp_path)
    assert converted.returncode == 0, converted.stderr
    state = load_checkpoint(str(full))  # laid out as one process's file: weights at the top level
    assert state["fc.weight"].shape == (1, 2)
    assert [state["sampler.consumed"], state["rank_states.1.sampler.consumed"]] == [12, 12]
