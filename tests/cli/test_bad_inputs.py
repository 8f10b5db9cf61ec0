"""Every subcommand, walked with bad inputs: one line on stderr, no traceback, the documented exit code,
nothing created or deleted (issue 20).

Option values run against the parser in-process (fast); bad files run through ``main()`` in-process
(what the console script calls), and a few of them again through the installed ``torchresume``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import torchresume as tr
from torchresume.cli.main import build_parser, main

TR = str(Path(sys.executable).with_name("torchresume"))
KEY, WRONG = "00112233445566778899aabbccddeeff", "ffeeddccbbaa99887766554433221100"
NUMBERS = ("0", "-1", "nan", "inf")


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def _numeric(action: argparse.Action) -> bool:
    return action.type in (int, float) or getattr(action.type, "__name__", "") in ("whole number", "number")


def _minimal(command: str, parser: argparse.ArgumentParser, skip: str) -> list[str]:
    """The arguments ``command`` needs to parse at all (positionals and required options)."""
    argv = []
    for action in parser._actions:
        if not action.option_strings:
            argv.append("x.ckpt")
        elif action.required and action.option_strings[0] != skip:
            argv += [action.option_strings[0], "1" if _numeric(action) else "x.ckpt"]
    return argv


NUMERIC = [(command, action.option_strings[0]) for command, p in _subparsers().items()
           for action in p._actions if action.option_strings and _numeric(action)]
# Values that are meaningful: momentum 0 (plain SGD) and seed 0. Everything else at 0, -1, nan or
# inf cannot work and is refused while parsing.
ACCEPTED = {("--momentum", "0"), ("--seed", "0")}


def test_every_numeric_option_checks_its_value() -> None:
    assert len(NUMERIC) >= 14  # train's, eval/infer/demo's, copy --workers, prune --keep, ...
    for command, p in _subparsers().items():
        for action in p._actions:
            assert action.type not in (int, float), (command, action.option_strings)  # no unchecked numbers


@pytest.mark.parametrize(("command", "option"), NUMERIC)
def test_numeric_options_at_0_minus_1_nan_inf(command, option, capsys) -> None:
    parser = build_parser()
    for value in NUMBERS:
        argv = [command, *_minimal(command, _subparsers()[command], option), f"{option}={value}"]
        if (option, value) in ACCEPTED:
            parser.parse_args(argv)
            continue
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(argv)
        assert exc.value.code == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"torchresume: error: {option} must be "), err
        assert err.endswith(f"got {value} (see: torchresume {command} --help)\n"), err


# -- bad files, through main() --------------------------------------------------------------------
@pytest.fixture(scope="module")
def place(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad")
    (root / "notckpt").mkdir()
    (root / "notckpt" / "notes.txt").write_text("hello\n")
    (root / "text.ckpt").write_text("this is not a checkpoint\n")
    (root / "empty.ckpt").write_bytes(b"")
    (root / "enc").mkdir()
    tr.save_checkpoint(torch.nn.Linear(2, 2), str(root / "enc" / "m-1_1.ckpt"), enc_key=bytes.fromhex(KEY))
    return root


INPUTS = {"missing": "nope.ckpt", "notckpt": "notckpt", "text": "text.ckpt", "empty": "empty.ckpt",
          "wrongkey": "enc/m-1_1.ckpt"}


def _argv(command: str, path: str, kind: str) -> list[str]:
    key = ["--dec-key-hex", WRONG] if kind == "wrongkey" else []
    return {"inspect": ["inspect", path, *key], "verify": ["verify", path, *key], "diff": ["diff", path, path, *key],
            "convert": ["convert", path, "out.ckpt", *key], "ls": ["ls", path, *key],
            "prune": ["prune", path, "--keep", "1"], "copy": ["copy", path, "copied"],
            "eval": ["eval", "--ckpt", path, *key], "infer": ["infer", "--ckpt", path, "--out", "o.png", *key],
            "train": ["train", "--train-url", "run", "--resume", path, "--epochs", "1", "--steps-per-epoch", "1"],
            }[command]


# (command, input) -> the documented exit code where it is not 1 (a failure):
# listing or pruning a directory without checkpoints is not an error; ls/prune of a
# file and copy of any existing file are not checkpoint readers' cases.
EXIT = {("ls", "notckpt"): 0, ("prune", "notckpt"): 0, ("ls", "wrongkey"): 1, ("prune", "wrongkey"): 1}
SKIP = {("copy", k) for k in INPUTS if k != "missing"} | {("train", "wrongkey")}
CASES = [(c, k) for c in ("inspect", "verify", "diff", "convert", "ls", "prune", "copy", "eval", "infer", "train")
         for k in INPUTS if (c, k) not in SKIP]


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*")}


@pytest.fixture
def in_place(place, monkeypatch) -> Iterator[Path]:
    monkeypatch.chdir(place)
    before = _tree(place)
    yield place
    assert _tree(place) == before  # nothing created or deleted


@pytest.mark.parametrize(("command", "kind"), CASES)
def test_bad_files_one_line_and_the_exit_code(command, kind, in_place, capsys) -> None:
    code = main(_argv(command, INPUTS[kind], kind))
    out, err = capsys.readouterr()
    assert code == EXIT.get((command, kind), 1), (out, err)
    assert "Traceback" not in err
    if code == 0:
        assert err == ""
    elif command == "verify" and kind not in ("missing", "notckpt"):
        assert err == "" and out.startswith("INVALID  ") and out.count("\n") == 1  # the verdict is the output
    else:
        assert err.count("\n") == 1 and err.startswith("torchresume: error: "), err


@pytest.mark.parametrize("argv", [["inspect", "empty.ckpt"], ["verify", "nope.ckpt"], ["train", "--lr", "nan"],
                                  ["eval", "--ckpt", "enc/m-1_1.ckpt", "--dec-key-hex", WRONG]])
def test_the_installed_command_says_the_same(argv, in_place) -> None:
    """The console script in a real process: the same one line and exit code as main() in-process."""
    proc = subprocess.run([TR, *argv], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("torchresume: error: "), proc.stderr
    assert proc.returncode == (2 if "nan" in argv else 1)
