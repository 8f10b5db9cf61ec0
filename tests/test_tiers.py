"""The quick tier is what tests/conftest.py says it is: every listed test exists, every kind is in it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import PROCESS_MODULES, QUICK

ROOT = Path(__file__).resolve().parents[1]


# One collection (pytest's own, in a subprocess) reports each test's tier: the marks tests/conftest.py
# sets, read after it set them. Each collection imports every test module (~14 s of CPU): once, not twice.
_REPORT_TIERS = """
import sys, pytest
class Tiers:
    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items):
        for item in items:
            print("TIER", "full" if item.get_closest_marker("full") else "quick", item.nodeid)
sys.exit(pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "-o", "addopts="], plugins=[Tiers()]))
"""


def _tiers() -> dict[str, str]:
    """Every collected test id and its tier ("full" or "quick")."""
    proc = subprocess.run([sys.executable, "-c", _REPORT_TIERS], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line.split(" ", 2)[1:] for line in proc.stdout.splitlines() if line.startswith("TIER ")]
    return {nodeid: tier for tier, nodeid in rows}


def test_every_quick_id_names_a_test_and_only_those_process_tests_are_quick() -> None:
    tiers = _tiers()
    every = set(tiers)
    quick = {t for t, tier in tiers.items() if tier == "quick"}
    assert sorted(set(QUICK) - every) == [], "a QUICK id in tests/conftest.py names no test (renamed?)"
    process_quick = {t for t in quick if t.split("::")[0] in PROCESS_MODULES}
    assert process_quick == set(QUICK)
    assert all(Path(ROOT, m).exists() for m in PROCESS_MODULES), "a PROCESS_MODULES entry names no file"
    unit = {t for t in every if t.split("::")[0] not in PROCESS_MODULES}
    assert unit <= quick, "every unit test is in the quick tier"
    fault_modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "tests" / "fault").glob("test_*.py")}
    torchrun_kills = {"tests/fault/test_distributed_kills.py", "tests/fault/test_node_loss.py",
                      "tests/fault/test_readme_loop_torchrun.py"}
    assert fault_modules - torchrun_kills <= {t.split("::")[0] for t in QUICK}
