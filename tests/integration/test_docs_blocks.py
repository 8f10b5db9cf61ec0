"""Every Python and shell block of the README and of docs/*.md runs, page by page, in a fresh directory.

Blocks run in their page's order in one working directory, Python blocks in one namespace per
page, so a page reads as a session: a ``title="train.py"`` block writes a file that a later
shell block runs. The prelude defines what the pages leave to the reader (``net``, ``opt``,
``model``, small datasets, a training step, a 16-byte ``key``) and puts the MindSpore-trained
LeNet5 fixture (``lenet-2_1875.ckpt``) in the directory. Shell blocks run with ``bash -e -o
pipefail`` and the set-up's ``.venv/bin`` first on PATH. Blocks marked in the page (see
tests/docs_blocks.py) are run by the test they name, or skipped with their reason shown.
Docstring examples of the public names run here too.
"""

from __future__ import annotations

import inspect
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import torchresume as tr
from tests.docs_blocks import ROOT, Block, all_blocks, blocks_of, pages
from torchresume.app.models import LeNet5
from torchresume.data import ArrayDataset
from torchresume.files import verify

FIXTURES = ROOT / "tests" / "fixtures" / "mindspore"
sys.path.insert(0, str(ROOT / "scripts"))
import docs_hooks  # noqa: E402  (scripts/ is not a package)

MAX_SKIPPED = 4  # skipping is for blocks that truly cannot run here; keep it rare
S3_ADDR = "127.0.0.1:9000"  # the local server's address in the pages; a free port replaces it here


def _prelude() -> dict[str, Any]:
    torch.manual_seed(0)
    net = LeNet5()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    images, labels = torch.randn(64, 1, 32, 32), torch.randint(0, 10, (64,))

    def train_step(net: nn.Module, opt: torch.optim.Optimizer) -> None:
        opt.zero_grad()
        nn.functional.cross_entropy(net(images[:8]), labels[:8]).backward()
        opt.step()

    train_ds = ArrayDataset(images, labels, batch_size=16)
    valid_ds = ArrayDataset(images[:32], labels[:32], batch_size=16, shuffle=False)
    model = tr.Model(net, nn.CrossEntropyLoss(), opt, metrics={"acc", "loss"})
    return {"tr": tr, "nn": nn, "torch": torch, "net": net, "opt": opt, "optimizer": opt, "steps": 3,
            "epochs": 1, "train_step": train_step, "key": b"0123456789abcdef", "model": model,
            "train_ds": train_ds, "valid_ds": valid_ds}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(TORCHRESUME_STAGING=str(workdir / ".staging"), TORCHRESUME_CACHE=str(workdir / ".cache"),
               PYTHONPATH=os.pathsep.join(sys.path))
    return env


def _run_shell(block: Block, workdir: Path) -> None:
    port = _free_port()
    code = block.code.replace(S3_ADDR, f"127.0.0.1:{port}").replace(S3_ADDR.replace(":", "/"), f"127.0.0.1/{port}")
    out = workdir / ".block-output"
    with open(out, "wb") as log:  # a file, not a pipe: a server the block left running cannot hold it
        proc = subprocess.Popen(["bash", "-e", "-o", "pipefail", "-c", code], cwd=workdir, env=_env(workdir),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=300)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # what the block started and did not stop
            except ProcessLookupError:
                pass
    assert rc == 0, f"{block.where} exited {rc}:\n{out.read_text(errors='replace')[-4000:]}"


def _run_here(block: Block) -> bool:
    return block.lang in ("python", "shell") and not block.skip and not block.by


PAGES = [p for p in pages() if any(_run_here(b) for b in blocks_of(p))]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_page_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copy(FIXTURES / "lenet-2_1875.ckpt", tmp_path / "lenet-2_1875.ckpt")
    namespace = _prelude()
    ran = 0
    for block in filter(_run_here, blocks_of(page)):
        if block.lang == "python" and block.title:
            compile(block.code, block.where, "exec")  # a file for a later block: at least valid Python
            (tmp_path / block.title).write_text(block.code)
        elif block.lang == "python":
            exec(compile(block.code, block.where, "exec"), namespace)
        else:
            _run_shell(block, tmp_path)
        ran += 1
    assert ran > 0
    # what the blocks leave behind is real: every checkpoint they wrote verifies (an encrypted one
    # with the page's own ``key``)
    for path in tmp_path.rglob("*.ckpt"):
        if path.name != "lenet-2_1875.ckpt" and ".staging" not in path.parts:
            verdict = verify(str(path))
            if not verdict.valid and "encrypted" in verdict.reason:
                verdict = verify(str(path), dec_key=namespace["key"])
            assert verdict.valid, (path, verdict.reason)


def test_every_block_is_run_or_marked() -> None:
    blocks = all_blocks()
    assert len([b for b in blocks if b.page == "README.md" and _run_here(b)]) >= 5
    for block in blocks:
        if block.by:
            test_file = ROOT / block.by
            assert test_file.is_file(), f"{block.where}: by={block.by} does not exist"
            assert f'"{block.id}"' in test_file.read_text(), f"{block.where}: {block.by} never asks for {block.id}"
        assert block.lang != "python" or block.title or not block.skip or "pip" in block.code, block.where


SKIPPED = [b for b in all_blocks() if b.skip]


def test_skipped_blocks_are_rare() -> None:
    assert len(SKIPPED) <= MAX_SKIPPED, [b.where for b in SKIPPED]


@pytest.mark.parametrize("block", SKIPPED, ids=[b.where for b in SKIPPED])
def test_skipped_block(block: Block) -> None:
    pytest.skip(f"{block.where}: {block.skip}")


def _docstring_examples() -> list[tuple[str, str]]:
    found = []
    for name, obj in docs_hooks.public_names().items():
        for code in re.findall(r"```python\n(.*?)```", inspect.getdoc(obj) or "", flags=re.S):
            found.append((name, textwrap.dedent(code)))
    return found


EXAMPLES = _docstring_examples()


@pytest.mark.parametrize(("name", "code"), EXAMPLES, ids=[n for n, _ in EXAMPLES])
def test_docstring_example_runs(name: str, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copy(FIXTURES / "lenet-2_1875.ckpt", tmp_path / "lenet-2_1875.ckpt")
    exec(compile(code, f"{name} docstring", "exec"), _prelude())


def test_public_names_have_docstrings() -> None:
    assert docs_hooks.undocumented() == []


class _Page:
    class file:
        src_uri = docs_hooks.API_PAGE


def test_the_site_build_refuses_an_api_page_missing_a_public_name() -> None:
    text = (ROOT / "docs" / docs_hooks.API_PAGE).read_text()
    assert docs_hooks.on_page_markdown(text, _Page()) == text
    without = text.replace("::: torchresume.api.load_checkpoint\n", "")
    with pytest.raises(ValueError, match=r"torchresume\.load_checkpoint"):
        docs_hooks.on_page_markdown(without, _Page())


def test_cli_reference_has_every_subcommand() -> None:
    from torchresume.cli.main import build_parser
    rendered = docs_hooks.cli_reference()
    for action in build_parser()._subparsers._group_actions:  # type: ignore[union-attr]
        for name in action.choices:
            assert f"## torchresume {name}\n" in rendered
            assert f"usage: torchresume {name}" in rendered


def test_readme_links_resolve() -> None:
    """The site build checks the links between docs/ pages; the README is not part of the site."""
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    assert len(links) >= 10
    for link in links:
        if "://" not in link:
            assert (ROOT / link).exists(), link


def test_every_headline_figure_names_its_command() -> None:
    """Each row of the README's figures table names a command that exists and the benchmarks page names."""
    text = (ROOT / "README.md").read_text()
    table = text.split("## Headline figures", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| question")]
    assert len(rows) >= 6
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    for row in rows:
        command = [cell.strip() for cell in row.strip("|").split("|")][3]
        script = re.search(r"`(benchmarks/\w+\.py)", command)
        if script:
            assert (ROOT / script.group(1)).is_file(), row
            assert script.group(1) in page, row
        else:
            assert "`torchresume demo`" in command and "torchresume demo" in page, row
        assert re.search(r"\| 20\d\d-\d\d-\d\d \|$", row), row  # when it was measured


def test_readme_is_short_and_has_no_history() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    for phrase in ("re-run after", "an earlier run", "earlier session", "this 2-core"):
        assert phrase not in text.lower(), phrase
