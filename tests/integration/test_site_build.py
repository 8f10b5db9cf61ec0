"""The documentation site builds with --strict, and --strict fails on what it is there to catch.

scripts/test.sh builds the site itself; these tests keep that build honest: a broken link, a
broken anchor, or a public name missing from the API page must fail it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MKDOCS = Path(sys.executable).parent / "mkdocs"

pytestmark = pytest.mark.skipif(not MKDOCS.exists(), reason="mkdocs is in the dev extra: bash scripts/setup.sh")


def _build(tmp_path: Path, edit: tuple[str, str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Build a copy of docs/ (``edit``: page, old text, new text) with the repository's mkdocs.yml."""
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    if edit:
        page, old, new = edit
        text = (docs / page).read_text()
        assert old in text
        (docs / page).write_text(text.replace(old, new, 1))
    config = (ROOT / "mkdocs.yml").read_text()
    config = config.replace("docs_dir: docs", f"docs_dir: {docs}")
    config = config.replace("  - scripts/docs_hooks.py", f"  - {ROOT / 'scripts' / 'docs_hooks.py'}")
    config = config.replace("paths: [src]", f"paths: [{ROOT / 'src'}]")
    (tmp_path / "mkdocs.yml").write_text(config)
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([str(MKDOCS), "build", "--strict", "-f", str(tmp_path / "mkdocs.yml"), "-d",
                           str(tmp_path / "site")], capture_output=True, text=True, env=env, timeout=300)


def test_the_site_builds(tmp_path: Path) -> None:
    done = _build(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "api" / "index.html").exists()
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    assert "usage: torchresume train" in cli  # generated from the parser at build time


@pytest.mark.parametrize(("edit", "message"), [
    (("concepts/checkpoint.md", "(../FORMAT.md)", "(../NO-SUCH-PAGE.md)"), "NO-SUCH-PAGE.md"),
    (("concepts/async-saves.md", "benchmarks.md#async-stall", "benchmarks.md#no-such-anchor"), "no-such-anchor"),
    (("reference/api.md", "::: torchresume.retention.KeepBest\n", ""), "torchresume.KeepBest"),
], ids=["broken link", "broken anchor", "public name missing"])
def test_strict_build_fails_on(edit: tuple[str, str, str], message: str, tmp_path: Path) -> None:
    done = _build(tmp_path, edit)
    assert done.returncode != 0
    assert message in done.stderr + done.stdout
