"""Break the product one invariant at a time and check that a test notices.

Usage: .venv/bin/python scripts/mutations.py [--only NAME ...] [--no-baseline] [--list]

Each mutation is data: (name, file, exact old text, new text, pytest node ids).
The repository's files (tracked and untracked-but-not-ignored) are copied to a
scratch directory; the real tree is never modified. For each mutation the old
text must occur exactly once in its file (a refactor that moved the code makes
the script fail loudly instead of passing silently); it is replaced, the named
tests run in the scratch copy against the mutated package, and the file is
restored. First the same tests run unmutated (the baseline), so a failure
counts as a kill only when the unmutated code passes them.

Prints a table mutation -> killed / SURVIVED and exits non-zero if any
mutation survived, a target text is missing, or the baseline fails. Slow
(it runs the fault tests several times); not part of the default test run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


STRACE = "tests/storage/test_durability_syscalls.py"
WRITE_ERR = ("tests/storage/test_write_errors.py", "tests/fault/test_out_of_space.py")
RNG_KILLS = ("tests/fault/test_rng_kills.py",)
INVARIANTS = "tests/integration/test_manager_invariants.py::test_lock_cleanup_damaged_newest_and_a_finished_run"
TRAINERS = "tests/integration/test_trainer_run_lock.py::test_a_job_holds_its_directory_and_cleans_it_at_start"

MUTATIONS: list[Mutation] = [
    Mutation("remove fsync of the file", "src/torchresume/storage/local.py",
             "            os.fsync(self._fd)\n", "            pass  # MUTATION: no fsync of the file\n", (STRACE,)),
    Mutation("remove fsync of the directory", "src/torchresume/storage/local.py",
             "        fsync_dir(self._directory)\n",
             "        pass  # MUTATION: no fsync of the directory\n", (STRACE,)),
    Mutation("swallow a write error", "src/torchresume/storage/local.py",
             "            self.written += pos\n            self.abort()\n"
             "            raise write_error(self.path, exc, self.written, self.size_hint) from exc\n",
             "            self.written += pos\n            self.abort()\n"
             "            return  # MUTATION: error swallowed\n", WRITE_ERR),
    Mutation("skip torch RNG restore", "src/torchresume/state/rng.py",
             '    torch.set_rng_state(state["torch"].clone())\n', "    pass  # MUTATION\n", RNG_KILLS),
    Mutation("skip python RNG restore", "src/torchresume/state/rng.py",
             "    random.setstate((version, tuple(internal), gauss))\n", "    pass  # MUTATION\n", RNG_KILLS),
    Mutation("skip numpy RNG restore", "src/torchresume/state/rng.py",
             '    np.random.set_state(state["numpy"])\n', "    pass  # MUTATION\n", RNG_KILLS),
    Mutation("drop the commit marker's size check", "src/torchresume/storage/remote.py",
             'if marker is None or marker.get("size") != e.get("size"):',
             "if marker is None:  # MUTATION", ("tests/storage/test_s3_faults.py",)),
    Mutation("delete a live writer's temporary", "src/torchresume/storage/local.py",
             "if m and not pid_alive(int(m.group(1))):", "if m:  # MUTATION",
             ("tests/storage/test_live_writer_temps.py",)),
    Mutation("invert the best policy (KeepBest order)", "src/torchresume/retention.py",
             'reverse=self.mode == "max")', 'reverse=self.mode != "max")  # MUTATION',
             ("tests/train/test_never_run.py::test_best_checkpoint_keeps_the_best",)),
    Mutation("invert the best comparison (ModelCheckpoint)", "src/torchresume/train/model_checkpoint.py",
             'better = self.best is None or (value > self.best if self.config.mode == "max"\n'
             "                                       else value < self.best)",
             'better = self.best is None or (value < self.best if self.config.mode == "max"  # MUTATION\n'
             "                                       else value > self.best)",
             ("tests/train/test_never_run.py::test_best_checkpoint_keeps_the_best",)),
    Mutation("retention may delete the newest", "src/torchresume/retention.py",
             "kept = {family[-1].path, *([protect] if protect else [])}",
             "kept = {*([protect] if protect else [])}  # MUTATION",
             ("tests/test_manager.py::test_the_newest_is_never_deleted",)),
    Mutation("retention on the training thread", "src/torchresume/manager.py",
             'self.slot.after(lambda: self._retain(path), f"retention after {path}")',
             "self._retain(path)  # MUTATION",
             ("tests/test_manager.py::test_retention_deletes_off_the_callers_thread_after_the_commit",)),
    Mutation("no save on a stop signal", "src/torchresume/train/model_checkpoint.py",
             "        self.save_if_unsaved(ctx)\n        ctx.last_checkpoint", "        ctx.last_checkpoint",
             ("tests/integration/test_s3_training.py::test_sigterm_saves_uploads_and_exits_143",)),
    Mutation("no run lock under torchrun", "src/torchresume/train/run_checkpoints.py",
             "            claim.acquire_lock()\n", "            pass  # MUTATION\n",
             ("tests/distributed/test_torchrun_parity.py::test_best_skip_lock_and_finished_under_torchrun",)),
    Mutation("the manager takes no run lock", "src/torchresume/manager.py",
             "        self._lock = run_lock.acquire(self.directory, local_dir=self.staging)\n",
             "        self._lock = None  # MUTATION\n", (INVARIANTS,)),
    Mutation("the manager cleans no killed writer's temporary", "src/torchresume/manager.py",
             "        if isinstance(self.storage, LocalStorage):\n            clean_stale_temps(self._where)\n", "",
             (INVARIANTS,)),
    Mutation("the manager leaves a killed sharded save's parts", "src/torchresume/manager.py",
             "        catalog.remove_unfinished(self.directory, self.prefix)", "        pass  # MUTATION",
             (INVARIANTS + "[torchrun]",)),
    Mutation("the trainers' jobs take no run lock", "src/torchresume/manager.py",
             "        self._lock = run_lock.acquire(self.directory, local_dir=self.staging)\n",
             "        self._lock = None  # MUTATION\n", (TRAINERS,)),
    Mutation("the trainers leave a killed sharded save's parts", "src/torchresume/manager.py",
             "        catalog.remove_unfinished(self.directory, self.prefix)", "        pass  # MUTATION", (TRAINERS,)),
    Mutation("the manager restores without taking the lock first", "src/torchresume/manager.py",
             "        self.acquire_lock()\n        if self.sharded is not None:\n            info = ",
             "        if self.sharded is not None:\n            info = ", (INVARIANTS,)),
]


def repo_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, check=True, capture_output=True).stdout.decode()
    return [f for f in out.split("\0") if f and (ROOT / f).is_file()]


def copy_tree(dest: Path) -> None:
    for rel in repo_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)


def check_targets(mutations: list[Mutation]) -> list[str]:
    problems = []
    for m in mutations:
        path = ROOT / m.file
        if not path.exists():
            problems.append(f"{m.name}: {m.file} does not exist")
            continue
        count = path.read_text().count(m.old)
        if count != 1:
            problems.append(f"{m.name}: target text found {count} times in {m.file} (must be exactly once): "
                            f"{m.old!r}")
        for test in m.tests:
            if not (ROOT / test.split("::", 1)[0]).exists():
                problems.append(f"{m.name}: test file {test} does not exist")
    return problems


def run_tests(work: Path, tests: tuple[str, ...] | list[str], log: Path) -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(work / "src"), str(work)]),
           "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    with open(log, "w") as f:
        return subprocess.run(cmd, cwd=work, env=env, stdout=f, stderr=subprocess.STDOUT,
                              timeout=1800).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", help="run only mutations whose name contains one of these")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copy and logs")
    args = parser.parse_args()
    mutations = [m for m in MUTATIONS if not args.only or any(o in m.name for o in args.only)]
    if args.list:
        for m in mutations:
            print(f"{m.name}: {m.file} -> {' '.join(m.tests)}")
        return 0
    problems = check_targets(mutations)
    if problems:
        print("mutation targets not found (update scripts/mutations.py after a refactor):", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="torchresume-mutations-"))
    try:
        copy_tree(work)
        probe = subprocess.run([sys.executable, "-c", "import torchresume; print(torchresume.__file__)"],
                               cwd=work, capture_output=True, text=True,
                               env={**os.environ, "PYTHONPATH": str(work / "src")})
        if not probe.stdout.strip().startswith(str(work)):
            print(f"the scratch copy's package is not the one imported: {probe.stdout}{probe.stderr}",
                  file=sys.stderr)
            return 2
        if not args.no_baseline:
            tests = sorted({t for m in mutations for t in m.tests})
            start = time.monotonic()
            rc = run_tests(work, tests, work / "baseline.log")
            print(f"baseline (unmutated, {len(tests)} test targets): rc={rc} "
                  f"in {time.monotonic() - start:.0f} s", flush=True)
            if rc != 0:
                print((work / "baseline.log").read_text()[-4000:], file=sys.stderr)
                print("the unmutated code fails these tests; fix that first", file=sys.stderr)
                return 2
        rows = []
        for i, m in enumerate(mutations):
            path = work / m.file
            original = path.read_text()
            path.write_text(original.replace(m.old, m.new, 1))
            log = work / f"mutation-{i}.log"
            start = time.monotonic()
            try:
                rc = run_tests(work, m.tests, log)
            finally:
                path.write_text(original)
            verdict = {0: "SURVIVED", 1: "killed"}.get(rc, f"ERROR (pytest rc={rc})")
            failed = [line.split(" ", 1)[1].split(" - ")[0] for line in log.read_text().splitlines()
                      if line.startswith("FAILED ")]
            rows.append((m.name, verdict, failed[0] if failed else "-"))
            print(f"  {m.name}: {verdict} ({time.monotonic() - start:.0f} s)", flush=True)
        width = max(len(r[0]) for r in rows)
        print()
        print(f"{'mutation':<{width}}  {'result':<9}  first failing test")
        print(f"{'-' * width}  {'-' * 9}  {'-' * 18}")
        for name, verdict, test in rows:
            print(f"{name:<{width}}  {verdict:<9}  {test}")
        bad = [r for r in rows if r[1] != "killed"]
        print(f"\n{len(rows) - len(bad)}/{len(rows)} mutations killed")
        if args.keep:
            print(f"scratch copy and logs kept in {work}")
        return 1 if bad else 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
