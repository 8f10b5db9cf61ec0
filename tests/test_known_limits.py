"""docs/index.md's "Known limits": every line is checked, here or by the test it names; a line
this module does not know fails (a new limit comes with its check, a lifted one goes)."""

from __future__ import annotations

import ast
import inspect
import re

import torchresume as tr
from tests.docs_blocks import ROOT
from torchresume.storage import direct
from torchresume.train.torchrun_options import HONOURED, REFUSED


def _limits() -> list[str]:
    text = (ROOT / "docs" / "index.md").read_text()
    section = text.split("## Known limits", 1)[1].split("\n## ", 1)[0]
    return [" ".join(item.split()) for item in re.findall(r"^- (.*?)(?=^- |^\n|\Z)", section, re.M | re.S)]


def _has_test(path: str, name: str) -> bool:
    tree = ast.parse((ROOT / path).read_text())
    return any(isinstance(n, ast.FunctionDef) and n.name == name for n in tree.body)


def _mindspore_cut(line: str) -> None:
    assert _has_test("tests/format/test_mindspore_read.py", "test_cut_between_entries_is_not_detectable")
    assert _has_test("tests/format/test_mindspore_read.py", "test_crc_checked_on_a_copy")


def _no_scaler(line: str) -> None:
    assert "scaler" not in inspect.signature(tr.Model).parameters
    assert "scaler" in inspect.signature(tr.CheckpointManager).parameters


def _o_direct(line: str) -> None:
    assert "32 MiB" in line and direct.DIRECT_MIN_BYTES == 32 * 2**20
    assert _has_test("tests/storage/test_direct.py", "test_small_files_stay_buffered")


def _unsigned_payload(line: str) -> None:
    assert _has_test("tests/storage/test_payload_signing.py", "test_multipart_upload_is_not_hashed_and_arrives_intact")
    assert _has_test("tests/storage/test_payload_signing.py", "test_callers_config_still_signs_the_payload")


def _cuda_untested(line: str) -> None:
    # The claim is about the set-up, not the wheel this suite happens to run on (a CUDA machine may
    # run it too): scripts/setup.sh pins torch through constraints.txt, which keeps it on the CPU wheel.
    assert "installs torch's CPU wheel" in line
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "-c constraints.txt torch==" in setup and "CPU wheel" in setup
    assert "CPU wheel" in (ROOT / "constraints.txt").read_text()


def _torchrun(line: str) -> None:
    refused = line.split("honour yet (", 1)[1].split(")", 1)[0]
    named = {re.match(r"`(\w+)", part.strip()).group(1) for part in refused.split(",")}  # type: ignore[union-attr]
    assert named == {r.option for r in REFUSED}
    assert {"monitor", "on_busy"} <= set(HONOURED)  # said to work: honoured, not refused
    assert _has_test("tests/distributed/test_torchrun_parity.py", "test_best_skip_lock_and_finished_under_torchrun")
    assert _has_test("tests/distributed/test_torchrun_cli.py",
                     "test_readme_command_sigterm_to_launcher_then_same_command_finishes")


def _manager_under_torchrun(line: str) -> None:
    assert _has_test("tests/test_manager_layouts.py", "test_an_exception_on_one_rank_saves_no_breakpoint")
    assert _has_test("tests/test_manager_layouts.py", "test_the_sharded_layout_writes_object_storage_directly")


CHECKS = {
    "A CRC-less MindSpore `.ckpt` cut exactly between two entries": _mindspore_cut,
    "`Model` has no AMP GradScaler argument": _no_scaler,
    "Local files of 32 MiB and more are written with O_DIRECT": _o_direct,
    "S3 uploads are sent as UNSIGNED-PAYLOAD": _unsigned_payload,
    "CUDA paths": _cuda_untested,
    "Under torchrun:": _torchrun,
    "`CheckpointManager` under torchrun:": _manager_under_torchrun,
}


def test_every_known_limit_is_checked() -> None:
    lines = _limits()
    assert len(lines) == len(CHECKS), lines
    for line in lines:
        starts = [k for k in CHECKS if line.startswith(k)]
        assert starts, f"docs/index.md's known limit has no check here: {line!r}"
        CHECKS[starts[0]](line)
