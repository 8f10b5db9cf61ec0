"""A fixed-seed sample of the fuzz harness (benchmarks/fuzz_checkpoints.py) over the file formats.

The full run (3000 mutations of every layout, links and FIFOs included) is its own command:
``nice .venv/bin/python -m benchmarks.fuzz_checkpoints --mutations 3000`` (docs/FORMAT.md, "Hostile files").
Here: byte and structure mutations of a native file, an encrypted one, a MindSpore one, a directory
checkpoint and a sharded one (each clean at 500 mutations, seed 0), each case
read by a worker process; every outcome must be a typed error or the original values.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks import fuzz_checkpoints


def test_fixed_seed_sample_has_no_findings(tmp_path: Path) -> None:
    lines: list[str] = []
    kinds = ["single", "encrypted", "mindspore", "directory", "sharded"]
    tallies = fuzz_checkpoints.run(kinds, 30, seed=0, keep=tmp_path, log_line=lines.append,
                                   families=("bytes", "structure"))
    assert [f for t in tallies.values() for f in t.findings] == []
    for kind, t in tallies.items():
        assert t.cases == 30, kind
        assert t.typed > 0 and t.typed + t.loaded == t.cases, kind  # each case read, most refused
