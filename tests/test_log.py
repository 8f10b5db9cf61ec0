"""The torchresume logger: status to stdout, problems and progress lines to stderr, one prefix, silenceable."""

from __future__ import annotations

import logging

import pytest

from torchresume.log import log, monitor, progress


def test_info_goes_to_stdout_and_warnings_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    log.info("resumed from %s", "run/ckpt-1_5.ckpt")
    log.warning("skipping %s", "bad.ckpt")
    out, err = capsys.readouterr()
    assert out == "torchresume: resumed from run/ckpt-1_5.ckpt\n"
    assert err == "torchresume: skipping bad.ckpt\n"


def test_a_leading_newline_ends_the_progress_bar_line_before_the_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    log.warning("\nSIGINT received; stopping after this step")
    assert capsys.readouterr().err == "\ntorchresume: SIGINT received; stopping after this step\n"


def test_progress_lines_go_to_stderr_at_info_and_monitors_have_no_prefix(
        capsys: pytest.CaptureFixture[str]) -> None:
    progress.info("epoch %d/%d step %d", 1, 2, 50)
    monitor.info("epoch: 1 step: 50, loss is 0.5")
    out, err = capsys.readouterr()
    assert err == "torchresume: epoch 1/2 step 50\n"
    assert out == "epoch: 1 step: 50, loss is 0.5\n"


def test_setting_the_level_silences_status_and_progress_but_not_warnings(
        capsys: pytest.CaptureFixture[str]) -> None:
    log.setLevel(logging.WARNING)
    try:
        log.info("saved")
        progress.info("epoch 1")
        log.warning("disk almost full")
    finally:
        log.setLevel(logging.INFO)
    out, err = capsys.readouterr()
    assert out == "" and err == "torchresume: disk almost full\n"


def test_library_code_never_prints() -> None:
    """Only the CLI and the app may print; the library's status goes through the logger."""
    import ast
    import pathlib

    import torchresume
    root = pathlib.Path(torchresume.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(("cli/", "app/")):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                offenders.append(f"{rel}:{node.lineno}")
    assert offenders == []
