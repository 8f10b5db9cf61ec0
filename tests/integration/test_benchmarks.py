"""The issue-12 benchmark command runs end to end at a tiny size and reports every target.

Not a speed test (figures at this size mean nothing): it keeps the command docs/benchmarks.md names
working as the code under it changes.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_save_costs_runs_and_reports_every_target(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "save_costs.py"), "--gib", "0.02", "--saves", "2",
           "--minutes", "0.05", "--paced-minutes", "0.05", "--floor-minutes", "0.05", "--every", "1",
           "--load-gib", "0.02", "--load-runs", "1", "--dir", str(tmp_path),
           "--record", "--results", str(tmp_path / "results.json")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = done.stdout.split("== every target of this run\n", 1)[1]
    targets = re.findall(r"^  (met |MISS) (.+?): ", summary, flags=re.M)
    names = [name for _, name in targets]
    assert names[:6] == ["async stall <= 0.05x torchresume sync", "async stall <= DCP async_save stall",
                         "steps during a background write <= 1.10x", "the same, paced at 100 MB/s",
                         "overhead of a save every 1 s < 1%", "the same, paced"]
    cold_lines = 2 if "cannot drop the page cache" not in done.stdout else 0
    assert len(names) == 6 + cold_lines
    assert "hypervisor steal" in done.stdout and "tr async 100 MB/s" in done.stdout
    recorded = json.loads((tmp_path / "results.json").read_text())["save_stall"]  # what plots.py draws
    assert [row["method"] for row in recorded["rows"]] == [
        "torchresume sync", "torchresume async", "tr async 100 MB/s", "dcp.save", "dcp.async_save", "torch.save+fsync"]
    assert all(row["stall_s"] > 0 for row in recorded["rows"])


def test_plots_are_drawn_from_the_results_file(tmp_path: Path) -> None:
    """benchmarks/plots.py makes every PNG the benchmarks page shows, from benchmarks/results.json."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "plots.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    shown = set(re.findall(r"\(img/([\w.]+\.png)\)", page))
    made = {p.name for p in tmp_path.glob("*.png")}
    assert shown and shown <= made, (shown, made)
    for name in made:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (ROOT / "docs" / "img" / name).exists(), f"docs/img/{name} not committed: run benchmarks/plots.py"


def test_results_entries_say_command_date_commit_machine() -> None:
    results = json.loads((ROOT / "benchmarks" / "results.json").read_text())
    for name, entry in results.items():
        for key in ("command", "date", "commit", "machine", "rows", "units"):
            assert entry.get(key), (name, key)
        script = entry["command"].split()[1]
        assert (ROOT / script).is_file(), (name, script)


def test_save_load_records_its_table(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "save_load.py"), "--sizes-mib", "4", "--runs", "1",
           "--dir", str(tmp_path), "--record", "--results", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    entry = json.loads(out.read_text())["save_load"]
    assert entry["command"].startswith(".venv/bin/python benchmarks/save_load.py --sizes-mib 4")
    methods = {row["method"]: row for row in entry["rows"]}
    assert set(methods) == {"direct write", "torchresume", "tr buffered", "torch.save", "safetensors"}
    assert methods["torchresume"]["save_gbs"] > 0 and methods["torchresume"]["load_gbs"] > 0


def test_overlap_staging_runs_and_reports_every_method(tmp_path: Path) -> None:
    """Issue 26's baseline command at a tiny size: every method's row and the no-save rate."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "overlap_staging.py"), "--sizes", "0.01", "--rounds", "1",
           "--run-steps", "4", "--every", "2", "--dir", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout.split("method ", 1)[1].splitlines()[1:]
    assert [line.split("  ")[0] for line in table] == ["torchresume async", "torchresume overlap", "DCP async_save",
                                                        "DCP DefaultStager", "no saves"], done.stdout
    assert list(tmp_path.iterdir()) == []  # what it wrote is gone


def test_distributed_scale_runs_side_by_side_with_dcp(tmp_path: Path) -> None:
    """Issue 23's command at a tiny size: per world size and method, every measured figure, recorded."""
    out = tmp_path / "results.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "distributed_scale.py"), "--worlds", "2", "--tensors", "20",
           "--numel", "16", "--big-gib", "0.01", "--big-worlds", "2", "--repeat", "1", "--dir", str(tmp_path),
           "--record", "--results", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = re.findall(r"^\s+2 (torchresume|dcp)\s", done.stdout, flags=re.M)
    assert rows == ["torchresume", "dcp"] * 4, done.stdout  # small and big case, save and restore each
    recorded = json.loads(out.read_text())["distributed_scale"]["rows"]
    assert {(r["case"], r["method"], r["op"]) for r in recorded} == {
        (case, method, op) for case in ("small", "big") for method in ("torchresume", "dcp")
        for op in ("save", "restore")}
    for row in recorded:
        assert row["s"] > 0 and row["collectives"] > 0 and row["r0_received"] > 0, row
        assert row["read_max"] > 0 if row["op"] == "restore" else True, row
    assert list(tmp_path.iterdir()) == [out]  # what it wrote is gone


def test_lightning_resume_runs_stock_and_torchresume_side_by_side(tmp_path: Path) -> None:
    """Issue 21's stock-vs-torchresume command at a tiny size: both rows, torchresume's bitwise equal."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "lightning_resume.py"), "--epochs", "1", "--kills", "1",
           "--workers", "0", "--dir", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line.split()[0]: line.split() for line in done.stdout.splitlines()[2:]}
    assert set(rows) == {"stock", "torchresume"}, done.stdout
    assert rows["torchresume"][6:10] == ["equal", "eq", "eq", "0/10"], done.stdout
    assert rows["torchresume"][-1] == "no" and rows["stock"][9].endswith("/10")
    assert list(tmp_path.iterdir()) == []  # what it wrote is gone


def test_sharded_restore_cold_and_replicated_async_save_run(tmp_path: Path) -> None:
    """The two commands docs/DISTRIBUTED.md names for issue 23's staging and cold-restore figures."""
    bench = ROOT / "benchmarks"
    for args in (["--mib", "64", "--repeat", "1"], ["--mib", "128", "--repeat", "2", "--ranks", "2"]):
        done = subprocess.run([sys.executable, str(bench / "sharded_restore_cold.py"), *args],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert re.search(r"cold restore, seconds: torchresume \[.+\]; dcp \[.+\]; median tr/DCP \d", done.stdout)
    done = subprocess.run([sys.executable, str(bench / "distributed_async_save.py"), "--mib", "32", "--ranks", "2",
                           "--repeat", "2", "--replicated"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "async: MiB staged per save (largest rank) [32.0, 16.0]" in done.stdout, done.stdout
    assert "MiB written per rank (last save) [16.0, 16.0]" in done.stdout, done.stdout
