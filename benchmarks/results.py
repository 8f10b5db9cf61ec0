"""The benchmark results file, benchmarks/results.json, that docs/benchmarks.md and plots.py use.

A benchmark run with ``--record`` stores its table here under its own name, with the command, the
UTC time, the commit and the machine it ran on, replacing that name's previous entry (the page's
"History" section keeps old figures). Entries whose ``source`` says "transcribed" were typed in from
a run's printed output before the scripts could record; rerunning the script with ``--record``
replaces them.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results.json"


def machine() -> str:
    """One line: CPU model, CPU count, memory, kernel, torch build."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = ""
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        mem = f", {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / (1 << 30):.0f} GiB"
    import torch
    return f"{cpu}, {os.cpu_count()} CPUs{mem}, Linux {platform.release()}, torch {torch.__version__}"


def commit() -> str:
    """The short commit of the working tree, ``+dirty`` when it has uncommitted changes."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def load(path: Path = RESULTS) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def record(name: str, rows: list[dict[str, Any]], *, units: dict[str, str],
           path: Path = RESULTS, notes: str = "") -> dict[str, Any]:
    """Store ``rows`` (one dict per method or configuration) under ``name``; returns the entry."""
    script = Path(sys.argv[0]).resolve()
    root = Path(__file__).resolve().parents[1]
    shown = script.relative_to(root) if script.is_relative_to(root) else script
    entry = {
        "command": " ".join([".venv/bin/python", str(shown), *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit(),
        "machine": machine(),
        "source": "recorded by the script (--record)",
        "units": units,
        "rows": rows,
        "notes": notes,
    }
    results = load(path)
    results[name] = entry
    path.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(f"recorded {name} in {path}")
    return entry
