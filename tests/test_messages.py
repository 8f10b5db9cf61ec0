"""Library messages name the library's arguments, never the command line's flags (issue 19, item 7):
the CLI says them as its flags (``cli.files.cli_words``, for errors and status lines alike)."""

from __future__ import annotations

import ast
import pathlib
import re

import torchresume
from torchresume.cli.files import cli_words

ROOT = pathlib.Path(torchresume.__file__).parent
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]+")
# A message may show a whole command to run ("torchresume convert --to safetensors"): that is a
# command line, not a flag of the caller's command.
COMMAND = re.compile(r"\btorchresume (convert|inspect|verify|ls|diff|prune|copy|train|eval|infer) ")


def _strings(path: pathlib.Path) -> list[tuple[int, str]]:
    """The string constants of a module, docstrings left out (they may show command lines)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_no_library_message_names_a_command_line_flag() -> None:
    found = [f"{path.relative_to(ROOT)}:{line}: {text!r}"
             for path in sorted(ROOT.rglob("*.py")) if path.relative_to(ROOT).parts[0] not in ("cli", "app")
             for line, text in _strings(path) if FLAG.search(text) and not COMMAND.search(text)]
    assert found == []


def test_the_cli_says_library_arguments_as_its_flags() -> None:
    assert cli_words("continue it later with prefix='lenet_1')") == "continue it later with --prefix lenet_1)"
    assert cli_words("continue one with prefix='lenet_1' (ModelCheckpoint's prefix), or start a new run with "
                     "resume='none'") == "continue one with --prefix lenet_1, or start a new run with --resume none"
    assert cli_words("resume with the same data and batch_size") == "resume with the same data and --batch-size"
    assert cli_words("the checkpoint is encrypted (AES-GCM); pass dec_key=<the key used to save it>") == (
        "the checkpoint is encrypted (AES-GCM); pass --dec-key-hex <the key, as hex>")
