"""What a new user hits first, run as the installed ``torchresume`` in a subprocess: the right
run resumed, diverged runs never "finished", flags named as typed, feedback while training."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from torchresume.inspection import human_bytes

TR = str(Path(sys.executable).with_name("torchresume"))


def run(*args: str, check: int | None = 0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([TR, *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **(env or {})})
    assert "Traceback" not in proc.stderr, proc.stderr
    if check is not None:
        assert proc.returncode == check, (args, proc.stdout, proc.stderr)
    return proc


def train(run_dir: Path, *extra: str, check: int | None = 0) -> subprocess.CompletedProcess[str]:
    return run("train", "--train-url", str(run_dir), "--steps-per-epoch", "10", "--save-steps", "5",
               "--print-every", "100", *extra, check=check)


def test_auto_resume_continues_the_run_the_command_names(tmp_path) -> None:
    train(tmp_path, "--epochs", "1")
    other = train(tmp_path, "--epochs", "1", "--resume", "none", "--lr", "0.02")
    assert (f"torchresume: {tmp_path} already has run 'lenet'; this run saves as 'lenet_1' "
            "(continue it later with --prefix lenet_1)") in other.stdout
    again = train(tmp_path, "--epochs", "2")  # the original command, one more epoch
    assert f"resumed from {tmp_path}/lenet-1_10.ckpt at epoch 1, step 10" in again.stdout
    assert "lr=" not in again.stderr  # its own run, not the lr-0.02 one
    picked = train(tmp_path, "--epochs", "2", "--lr", "0.02", "--prefix", "lenet_1")
    assert f"resumed from {tmp_path}/lenet_1-1_10.ckpt" in picked.stdout
    for path in tmp_path.glob("lenet-*.ckpt"):
        path.unlink()
    ambiguous = train(tmp_path, "--epochs", "3", check=1)
    assert ambiguous.stderr == (
        f"torchresume: error: {tmp_path} has no checkpoints of run 'lenet' but has runs lenet_1 (newest "
        "lenet_1-2_10.ckpt); continue one with --prefix lenet_1, or start a new run "
        "with --resume none\n")


def test_a_diverged_run_is_never_finished(tmp_path) -> None:
    diverged = train(tmp_path, "--epochs", "1", "--lr", "1000", "--print-every", "10", check=1)
    assert diverged.stderr.endswith("torchresume: error: loss is nan at epoch 1 step 10: training diverged; "
                                    "lower the learning rate or check the data\n")
    again = train(tmp_path, "--epochs", "1", check=1)
    assert "training already finished" not in again.stdout
    assert f"torchresume: skipping {tmp_path}/lenet-1_10_breakpoint.ckpt: its weights are not finite" in again.stderr
    assert again.stderr.endswith(
        f"torchresume: error: {tmp_path}: every checkpoint of the run (lenet-1_10_breakpoint.ckpt, lenet-1_10.ckpt, "
        "lenet-1_5.ckpt) has non-finite weights (the run diverged); start over with --resume none, "
        "e.g. at a lower learning rate\n")


def test_flags_are_named_as_typed(tmp_path) -> None:
    see = " (see: torchresume train --help)\n"  # usage errors: one line, exit 2
    assert train(tmp_path, "--save-steps", "-5", check=2).stderr == \
        "torchresume: error: --save-steps must be at least 1, got -5" + see
    assert train(tmp_path, "--keep-max", "0", check=2).stderr == \
        "torchresume: error: --keep-max must be at least 1, got 0" + see
    assert train(tmp_path, "--write-mb-per-s", "200", check=2).stderr == \
        "torchresume: error: --write-mb-per-s paces background saves; add --async-save" + see
    assert train(tmp_path, "--overlap", check=2).stderr == \
        "torchresume: error: --overlap overlaps the copy of a background save with training; add --async-save" + see
    assert train(tmp_path, "--async-save", "--write-mb-per-s", "0", check=2).stderr == \
        "torchresume: error: --write-mb-per-s must be a positive number of MB/s, got 0" + see
    assert train(tmp_path, "--async-save", "--write-mb-per-s", "nan", check=2).stderr == \
        "torchresume: error: --write-mb-per-s must be a positive number of MB/s, got nan" + see
    assert train(tmp_path, "--save-deadline", "0", check=2).stderr == \
        "torchresume: error: --save-deadline must be a positive number of seconds, got 0" + see
    assert train(tmp_path, "--save-deadline", "60", check=2).stderr == \
        ("torchresume: error: --save-deadline bounds each rank's write of a sharded save under torchrun; one "
         "process has no other rank to hold: drop --save-deadline, or run under torchrun" + see)


def test_a_failed_save_names_the_file_and_the_cause(tmp_path) -> None:
    (tmp_path / "lenet-1_5.ckpt").mkdir()  # the checkpoint's name is taken by a directory
    proc = train(tmp_path, "--epochs", "1", check=1)
    assert proc.stderr.endswith(
        f"torchresume: error: {tmp_path}/lenet-1_5.ckpt: cannot write the checkpoint: Is a directory "
        "(earlier checkpoints are intact)\n")
    assert ".tmp-" not in proc.stderr


def test_progress_lines_in_logs_and_one_line_per_checkpoint(tmp_path) -> None:
    proc = train(tmp_path, "--epochs", "1")
    steps = re.findall(r"^torchresume: epoch 1/1 step (\d+)/10 \((\d+)%\) loss \d+\.\d{4}, [\d.]+ steps/s$",
                       proc.stderr, re.M)
    assert steps == [(str(s), str(10 * s)) for s in range(1, 11)]
    saved = re.findall(r"^torchresume: saved (\S+) \(([\d.]+ KiB), \d+\.\d\d s\)$", proc.stdout, re.M)
    names = [f"{tmp_path}/lenet-1_5.ckpt", f"{tmp_path}/lenet-1_10.ckpt"]
    assert saved == [(name, human_bytes(os.path.getsize(name))) for name in names]


def test_a_bar_on_terminals(tmp_path) -> None:
    import pty
    master, slave = pty.openpty()  # a terminal of size 0x0, as some consoles report
    proc = subprocess.Popen([TR, "train", "--train-url", str(tmp_path), "--epochs", "1", "--steps-per-epoch",
                             "40", "--save-steps", "20", "--print-every", "20"], stdin=slave, stdout=slave,
                            stderr=slave,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    assert proc.wait() == 0
    text = out.decode()
    assert re.search(r"\repoch 1:  50%\|\S+ +\| 20/40 \[", text), text[-2000:]
    assert "torchresume: epoch 1/1 step" not in text  # bars, not log lines, on a terminal
    # saved and loss lines clear the bar first (tqdm.write), never land on its line
    printed = re.findall(r"(.)(torchresume: saved |epoch: 1 step: )", text, re.S)
    assert len(printed) == 4 and all(before == "\r" for before, _ in printed), printed
    assert re.search(r"\| 20/40 \[.*, mean loss of 20 steps \d\.\d{4}\]", text)  # the bar says it is a mean
