"""Aimed SIGKILLs of real training processes, each classified by where it landed.

A kill is triggered only by progress the *current* process reports on its own
stdout (lines ``step <global_step>``), so nothing an earlier run logged can
trigger it. Just before the kill the process is frozen with SIGSTOP and the
run directory is looked at: a temporary checkpoint file (``.{name}.tmp-{pid}-...``)
means a checkpoint write was in flight (``mid-save``); a marker ``.copy-in-flight-{pid}-{n}``
(which a workload with overlapped staging creates while a save's deferred copy runs,
see rng_workload.py) means a copy was (``mid-copy``); neither means the process
was training (``mid-step``). SIGKILL then lands exactly in the state that was
classified. A process that finished before the kill counts as ``finished``.

With ``group=True`` the command is a launcher of several processes (torchrun and its ranks, their
DataLoader workers; torchrun starts each rank in a session of its own): the launcher and all its
descendants are frozen and killed together, and a temporary of any of them, in the run directory
or in a checkpoint directory inside it (a sharded checkpoint's parts), or a checkpoint directory
this launch wrote into that has no ``manifest.json`` yet (its ranks between their parts and the
commit) means ``mid-save``.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

TEMP = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]+$")
COPY = re.compile(r"^\.copy-in-flight-(\d+)-\d+$")
STEP = re.compile(r"^step \d+\b")  # what the workloads here print after each step
STARTUP_LIMIT_S = 300  # a safety net against a hung child, never a measured duration


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def _temporaries_by_pid(directory: Path, pattern: re.Pattern[str] = TEMP) -> list[tuple[str, int]]:
    """The checkpoint temporaries (or, with ``COPY``, copy markers) in ``directory`` now, each with
    the pid of the process writing it."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return [(n, int(m.group(1))) for n in names if (m := pattern.match(n))]


def temporaries(directory: Path, pid: int, pattern: re.Pattern[str] = TEMP) -> list[str]:
    """The checkpoint temporaries (or, with ``COPY``, copy markers) of ``pid`` in ``directory`` now."""
    return [name for name, writer in _temporaries_by_pid(directory, pattern) if writer == pid]


def _stat(pid: int | str) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after "pid (comm)": state, ppid, ...; None when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()


def family(root: int) -> dict[int, str]:
    """``root`` and its live (not zombie) descendants, parents first, each with its start time
    (a pid is only ever signalled again while the same process holds it)."""
    children: dict[int, list[int]] = {}
    starts: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        fields = _stat(entry) if entry.isdigit() else None
        if fields is not None and fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
            starts[int(entry)] = fields[19]
    found, todo = {}, [root]
    while todo:
        pid = todo.pop(0)
        if pid in starts:
            found[pid] = starts[pid]
        todo += children.get(pid, [])
    return found


def _alive(pid: int, start: str) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z" and fields[19] == start


def in_flight(directory: Path, pids: set[int] | Callable[[int], bool], since: float) -> list[str]:
    """What shows a save of ``pids`` (a set, or a test of a pid) in flight: their temporaries in
    ``directory`` and in the directories inside it, and each directory there without its
    ``manifest.json`` written into since ``since`` (a sharded save whose parts are written and
    whose commit is not)."""
    owns = pids.__contains__ if isinstance(pids, set) else pids
    try:
        subdirs = [directory / n for n in os.listdir(directory) if (directory / n).is_dir()]
    except FileNotFoundError:
        return []
    found = [name for where in (directory, *subdirs) for name, pid in _temporaries_by_pid(where) if owns(pid)]
    for sub in subdirs:
        with contextlib.suppress(FileNotFoundError):  # retention may delete it meanwhile
            if not (sub / "manifest.json").exists() and sub.stat().st_mtime >= since:
                found.append(sub.name)
    return found


class Child:
    """A training subprocess whose stdout ``step N`` lines are counted as they arrive.

    ``group``: the subprocess leads a process group of its own (a launcher and its ranks),
    stopped, classified and killed as one.
    """

    def __init__(self, cmd: list[str], progress: re.Pattern[str] = STEP, group: bool = False) -> None:
        self.progress = progress
        self.group = group
        self.started = time.time()
        self.proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, bufsize=1, start_new_session=group)
        self.signalled: dict[int, str] = {}  # pid -> start time: every process signalled (orphans too)
        self._family: set[int] = set()  # with ``group``: its processes when last looked up
        self._foreign: set[int] = set()  # writers of temporaries found that are none of them
        self.steps = 0  # progress lines this process printed
        self.lines: list[str] = []
        self.stderr = ""
        self._new = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._err_reader = threading.Thread(target=self._read_err, daemon=True)
        self._err_reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._new:
                self.lines.append(line.rstrip("\n"))
                if self.progress.search(line):
                    self.steps += 1
                self._new.notify_all()
        with self._new:
            self._new.notify_all()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()

    def wait_new_steps(self, n: int) -> bool:
        """Block until this process reported ``n`` completed steps; False if it ended first."""
        deadline = time.monotonic() + STARTUP_LIMIT_S
        with self._new:
            while self.steps < n and self.proc.poll() is None and time.monotonic() < deadline:
                self._new.wait(0.05)
            return self.steps >= n

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the child (with ``group``: to it and its descendants, launcher first)."""
        if not self.group:
            os.kill(self.proc.pid, sig)
            return
        os.kill(self.proc.pid, sig)  # ProcessLookupError: the launcher is gone
        self.signalled.update(family(self.proc.pid))
        for pid, start in self.signalled.items():
            if _alive(pid, start):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)

    def temporaries(self, run_dir: Path) -> list[str]:
        """The checkpoint temporaries the child (with ``group``, any of its processes) has open now."""
        if self.group:
            return in_flight(run_dir, self._owns, self.started)
        return temporaries(run_dir, self.proc.pid)

    def _owns(self, pid: int) -> bool:
        """Whether ``pid`` is one of the group's processes. The processes are looked up again only
        for a pid not seen yet: a look-up reads every /proc entry (milliseconds), and the aim at a
        save polls every half millisecond, which would take a core from the job it watches."""
        if pid not in self._family and pid not in self._foreign:
            self._family = set(family(self.proc.pid))
            if pid not in self._family:
                self._foreign.add(pid)  # an earlier launch's leftover: not looked up again
        return pid in self._family

    def copies(self, run_dir: Path) -> list[str]:
        """The markers of deferred copies in flight the child made (one process; rng_workload.py)."""
        return temporaries(run_dir, self.proc.pid, COPY)

    def finish(self) -> int:
        rc = self.proc.wait(timeout=STARTUP_LIMIT_S)
        self._reader.join(timeout=10)
        self._err_reader.join(timeout=10)
        deadline = time.monotonic() + STARTUP_LIMIT_S  # no process killed here outlives the kill
        while (left := [p for p, t in self.signalled.items() if _alive(p, t)]) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        return rc


def _stop_and_classify(child: Child, run_dir: Path) -> str:
    try:
        child.signal(signal.SIGSTOP)
    except ProcessLookupError:
        return "finished"
    # The child may have exited just before the stop: a zombie is not training.
    if child.proc.poll() is not None:
        return "finished"
    if child.temporaries(run_dir):
        return "mid-save"
    return "mid-copy" if child.copies(run_dir) else "mid-step"


def kill_once(cmd: list[str], run_dir: Path, aim: str, rng: random.Random, *,
              max_new_steps: int = 20, progress: re.Pattern[str] = STEP, group: bool = False) -> tuple[str, Child]:
    """Start ``cmd``, wait for new progress, SIGKILL it ``mid-save`` or ``mid-step`` (aim).

    Returns where the kill landed ("mid-save", "mid-step" or "finished") and the child.
    """
    child = Child(cmd, progress, group)
    landed = "finished"
    if child.wait_new_steps(rng.randint(1, max_new_steps)):
        if aim in ("mid-save", "mid-copy"):
            landed = _aim_at_save(child, run_dir, rng, copies=aim == "mid-copy")
        else:
            landed = _aim_between_saves(child, run_dir, rng)
        if landed != "finished":
            child.signal(signal.SIGKILL)
    child.finish()
    if landed != "finished" and child.proc.returncode != -signal.SIGKILL:
        landed = "finished"
    return landed, child


def _aim_between_saves(child: Child, run_dir: Path, rng: random.Random) -> str:
    """Freeze the child at a random instant when no checkpoint write or deferred copy is in flight."""
    attempts = 50
    for attempt in range(attempts):
        time.sleep(rng.uniform(0.0, 0.005))
        landed = _stop_and_classify(child, run_dir)
        if landed in ("mid-step", "finished") or attempt == attempts - 1:
            return landed  # still frozen: the kill lands in the state just classified
        child.signal(signal.SIGCONT)  # a save is being written (or a copy made): aim again
    return "finished"


def _aim_at_save(child: Child, run_dir: Path, rng: random.Random, copies: bool = False) -> str:
    """Freeze the child while one of its checkpoint temporaries (``copies``: copy markers) exists
    (skipping 0-2 saves first)."""
    skip = rng.randint(0, 2)
    seen: set[str] = set()
    deadline = time.monotonic() + STARTUP_LIMIT_S
    while child.proc.poll() is None and time.monotonic() < deadline:
        temps = child.copies(run_dir) if copies else child.temporaries(run_dir)
        fresh = [t for t in temps if t not in seen]
        if fresh and len(seen) >= skip:
            landed = _stop_and_classify(child, run_dir)
            if landed != "mid-step":
                return landed
            child.signal(signal.SIGCONT)  # the write committed between look and stop: try the next
        seen.update(fresh)
        time.sleep(0.0005)
    return "finished"


def random_kills(cmd: list[str], run_dir: Path, kills: int, seed: int, *,
                 max_new_steps: int = 20, progress: re.Pattern[str] = STEP,
                 check: Callable[[Path], None] | None = None, group: bool = False,
                 aims: tuple[str, ...] = ("mid-save", "mid-step")) -> Counter[str]:
    """``kills`` aimed kills, taking ``aims`` in turn; returns where they landed.

    ``check(run_dir)`` runs after each kill (e.g. every committed file verifies). ``group``: each
    launch is a process group, killed as one (see ``Child``).
    """
    rng = random.Random(seed)
    landed: Counter[str] = Counter()
    for i in range(kills):
        aim = aims[i % len(aims)]
        where, child = kill_once(cmd, run_dir, aim, rng, max_new_steps=max_new_steps, progress=progress,
                                 group=group)
        if where == "finished":
            assert child.proc.returncode == 0, child.stderr
        landed[where] += 1
        if check is not None:
            check(run_dir)
        if where == "finished":
            break
    return landed


def report(name: str, landed: Counter[str]) -> str:
    copies = f"{landed['mid-copy']} mid-copy, " if landed["mid-copy"] else ""
    line = (f"{name}: {sum(landed.values())} kills: {landed['mid-step']} mid-step, "
            f"{landed['mid-save']} mid-save, {copies}{landed['finished']} after the run finished")
    print(f"\n{line}", flush=True)
    return line
