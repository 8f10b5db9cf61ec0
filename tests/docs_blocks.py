"""The code blocks of the README and of every page under docs/, as the docs tests run them.

A block is a fenced block at the start of a line. Python and shell blocks (``python``,
``bash``, ``sh``) run; ``text`` and unlabelled blocks are output or layouts and do not.
An HTML comment on the line just before a fence says how a block is tested, when not by
tests/integration/test_docs_blocks.py in the page's order:

* ``<!-- docs-test: skip REASON -->``: not run; the reason is reported as a pytest skip.
* ``<!-- docs-test: id=NAME by=tests/PATH.py -->``: run by that test, which finds the block with
  ``block("NAME")`` (so the block can move between pages with its test still finding it).

A Python block with ``title="NAME"`` in its fence (```` ```python title="train.py" ````) is a file:
it is written to NAME in the page's working directory for later shell blocks to run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNNABLE = {"python": "python", "bash": "shell", "sh": "shell", "shell": "shell"}
_FENCE = re.compile(r"^```([A-Za-z0-9_+-]*)(.*)$")
_MARKER = re.compile(r"^<!--\s*docs-test:\s*(.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository root
    line: int  # of the opening fence, 1-based
    lang: str  # "python", "shell" or the fence's own label
    code: str
    title: str | None = None
    skip: str | None = None  # the reason, when marked skip
    id: str | None = None
    by: str | None = None  # the test that runs it, when not the docs-blocks test

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def blocks_of(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, label, info = i, m.group(1), m.group(2)
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        marker = _MARKER.match(lines[start - 1]) if start else None
        fields = marker.group(1) if marker else ""
        skip = fields[len("skip"):].strip() if fields.startswith("skip") else None
        if fields.startswith("skip") and not skip:
            raise ValueError(f"{path}:{start + 1}: a skip marker needs a reason")
        named = dict(re.findall(r"(\w+)=(\S+)", fields)) if not skip else {}
        title = re.search(r'title="([^"]+)"', info)
        found.append(Block(str(path.relative_to(ROOT)), start + 1, RUNNABLE.get(label, label or "text"),
                           "\n".join(lines[start + 1:end]) + "\n", title.group(1) if title else None,
                           skip, named.get("id"), named.get("by")))
        i = end + 1
    return found


def all_blocks() -> list[Block]:
    return [b for page in pages() for b in blocks_of(page)]


def block(block_id: str) -> Block:
    """The one block marked ``id=block_id`` on any page."""
    [found] = [b for b in all_blocks() if b.id == block_id]
    return found
