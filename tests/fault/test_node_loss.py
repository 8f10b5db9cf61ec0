"""A whole node lost: SIGKILL of one of two launchers (a "node") and its ranks; the end is bitwise equal.

Two torchrun launchers on this machine as two nodes (``--nnodes 2``, c10d rendezvous on 127.0.0.1,
one rank each: world size 2), as ``tests/distributed/test_two_nodes.py`` starts them. Node 0 is
started first and hosts the rendezvous store (its launcher binds the endpoint's port before node 1
starts); rank 0 runs there too (c10d orders the nodes by host, then launcher pid). A baseline runs
uninterrupted. The interrupted run loses a whole node four times: node 1 between saves, node 0 (the
store's host) mid-save, node 0 between saves, node 1 mid-save. Before each kill both nodes are
frozen (SIGSTOP) and the checkpoint directory is looked at (``killing.in_flight``: a part's
temporary or a checkpoint directory without its ``manifest.json``, of either node's processes,
means mid-save; that includes a save's retention, which uncommits an old checkpoint before removing
it); then the lost node's launcher and all its descendants get SIGKILL and the other node is let
go. The surviving node must end by itself, soon and non-zero, its rank saying the one line "lost
rank ...; this job cannot go on" (never waiting out the 600 s process-group timeout). Then both
nodes are started again with the same commands; each start resumes from the newest committed
checkpoint there at the time ("resumed from ... at epoch E, step S"). Every tensor of the final
checkpoint (weights, optimizer state, each rank's RNG and data position) is bitwise equal to the
baseline's. ``KILL_SEED`` varies the aims.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.distributed.launch import committed, every_tensor, free_port, manifest_info, torchrun_cmd, train_cli
from tests.fault.killing import Child, family, in_flight, report
from torchresume.files import verify

STEPS = 40
ARGS = ("--epochs", "1", "--steps-per-epoch", str(STEPS), "--save-steps", "4", "--print-every", "1")
PROGRESS = re.compile(r"^epoch: \d+ step: \d+,")  # rank 0's line after each step
# (what is aimed at, which node is lost): each node lost between saves and mid-save
KILLS = (("mid-step", 1), ("mid-save", 0), ("mid-step", 0), ("mid-save", 1))
SURVIVOR_END_S = 60  # unloaded a survivor ends within 1 s; this catches one left in a 600 s timeout
LIMIT_S = 300  # a safety net against a hung launcher, never a measured duration


def _cmd(directory: Path, node: int, port: int) -> list[str]:
    extra = ["--nnodes", "2", "--node-rank", str(node), "--rdzv-backend", "c10d",
             "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "node-loss"]
    return torchrun_cmd(1, train_cli(directory, *ARGS), extra=extra)


def _listening(port: int) -> bool:
    """Whether some process listens on 127.0.0.1/0.0.0.0:``port`` (TCP, IPv4 or IPv6)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                return True
    return False


def _start(directory: Path, port: int) -> list[Child]:
    """Node 0, then (once node 0's launcher hosts the rendezvous store) node 1."""
    node0 = Child(_cmd(directory, 0, port), PROGRESS, group=True)
    deadline = time.monotonic() + LIMIT_S
    while not _listening(port) and node0.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _listening(port), f"node 0 never listened on {port}: {node0.stderr[-2000:]}"
    return [node0, Child(_cmd(directory, 1, port), PROGRESS, group=True)]


def _output(nodes: list[Child]) -> str:
    return "\n".join("\n".join(n.lines) + "\n" + n.stderr for n in nodes)


def _steps(nodes: list[Child], n: int) -> bool:
    """Until rank 0 (on either node) reported ``n`` new steps; False if a launcher ended first."""
    deadline = time.monotonic() + LIMIT_S
    while time.monotonic() < deadline:
        if max(node.steps for node in nodes) >= n:
            return True
        if any(node.proc.poll() is not None for node in nodes):
            return False
        time.sleep(0.01)
    return False


def _pids(nodes: list[Child]) -> set[int]:
    return {pid for node in nodes for pid in family(node.proc.pid)}


def _freeze(nodes: list[Child], work: Path, since: float) -> str:
    """SIGSTOP both nodes (every process), then classify: "mid-save", "mid-step" or "finished"."""
    for node in nodes:
        try:
            node.signal(signal.SIGSTOP)
        except ProcessLookupError:
            pass
    if any(node.proc.poll() is not None for node in nodes):
        return "finished"
    found = in_flight(work, _pids(nodes), since)
    if found:
        print(f"in flight: {sorted(found)[:2]} and {max(len(found) - 2, 0)} more", flush=True)
    return "mid-save" if found else "mid-step"


def _thaw(nodes: list[Child]) -> None:
    for node in nodes:
        try:
            node.signal(signal.SIGCONT)
        except ProcessLookupError:
            pass


def _saving(work: Path, since: float) -> set[str]:
    """The checkpoints being saved now: directories written into since ``since`` without a manifest."""
    names = set()
    for name in os.listdir(work) if work.exists() else ():
        path = work / name
        try:
            if name.endswith(".ckpt") and not (path / "manifest.json").exists() and path.stat().st_mtime >= since:
                names.add(name)
        except FileNotFoundError:  # retention removed it meanwhile
            continue
    return names


def _aim(nodes: list[Child], work: Path, since: float, aim: str, rng: random.Random) -> str:
    """Freeze both nodes at a random instant of ``aim``: between saves once 5-8 more steps are
    done, or while the 2nd or 3rd save of this start is in flight. Returns where they froze (a
    look that finds the save committed by the time both are stopped aims again)."""
    if aim == "mid-step":
        if not _steps(nodes, rng.randint(5, 8)):  # a save (every 4 steps) committed since the resume
            return "finished"
        for _ in range(50):
            time.sleep(rng.uniform(0.0, 0.02))
            landed = _freeze(nodes, work, since)
            if landed != "mid-save":
                return landed
            _thaw(nodes)  # a save is in flight: aim again
        return _freeze(nodes, work, since)
    skip, seen = rng.randint(1, 2), set()
    deadline = time.monotonic() + LIMIT_S
    while all(node.proc.poll() is None for node in nodes) and time.monotonic() < deadline:
        fresh = _saving(work, since) - seen
        if fresh and len(seen) >= skip:
            landed = _freeze(nodes, work, since)
            if landed != "mid-step":
                return landed
            _thaw(nodes)  # it committed between the look and the stop: the next save
        seen |= fresh
        time.sleep(0.0005 if any(node.steps for node in nodes) else 0.05)  # fine once training
    return "finished"


def _resumed_from(work: Path) -> str | None:
    """What the next start must say it resumed from: the newest committed checkpoint now."""
    done = committed(work, "mlp")
    if not done:
        return None
    step = int(manifest_info(done[-1])["global_step"])
    return f"resumed from {done[-1]} at epoch 1, step {step} (global step {step})"


def _check_resume(nodes: list[Child], expected: str | None) -> None:
    out = _output(nodes)
    if expected is None:
        assert "resumed from" not in out, out[-3000:]
    else:
        assert expected in out, f"expected {expected!r}:\n{out[-3000:]}"


def _finish(nodes: list[Child]) -> list[int]:
    codes = [node.finish() for node in nodes]
    for node in nodes:
        node.proc.wait()
    return codes


def _run_through(work: Path, port: int) -> None:
    expected = _resumed_from(work)
    nodes = _start(work, port)
    codes = _finish(nodes)
    assert codes == [0, 0], _output(nodes)[-4000:]
    _check_resume(nodes, expected)


def _committed_verify(work: Path) -> None:
    for path in committed(work, "mlp"):
        assert verify(str(path)).valid, path.name


def _lose_a_node(work: Path, port: int, aim: str, victim: int, rng: random.Random) -> str:
    """Start both nodes, aim, SIGKILL node ``victim`` whole; the survivor ends by itself, soon."""
    expected = _resumed_from(work)
    t0 = time.monotonic()
    nodes = _start(work, port)
    since = nodes[0].started
    t1 = time.monotonic()
    landed = _aim(nodes, work, since, aim, rng)
    print(f"start {t1 - t0:.1f} s, aim {time.monotonic() - t1:.1f} s, {max(n.steps for n in nodes)} steps", flush=True)
    if landed != "finished":
        nodes[victim].signal(signal.SIGKILL)
        killed = time.monotonic()
        _thaw([nodes[1 - victim]])
        survivor = nodes[1 - victim].proc
        try:
            code = survivor.wait(timeout=SURVIVOR_END_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"node {1 - victim} still runs {SURVIVOR_END_S} s after node {victim} was lost:\n"
                        + _output(nodes)[-3000:])
        ended = time.monotonic() - killed
        assert code != 0, _output(nodes)[-3000:]
    codes = _finish(nodes)
    if landed != "finished":
        said = [line for line in _output(nodes[1 - victim:2 - victim]).splitlines() if "torchresume: error" in line]
        assert said and "this job cannot go on" in said[0], _output(nodes)[-3000:]  # one line, no hang
        print(f"node {victim} lost {landed} (resumed: {expected}); node {1 - victim} ended with {code} "
              f"after {ended:.1f} s saying {said[:1]}", flush=True)
    if landed == "finished":
        assert codes == [0, 0], _output(nodes)[-4000:]
    else:
        assert codes[victim] == -signal.SIGKILL
    _check_resume(nodes, expected)
    _committed_verify(work)
    return landed


@pytest.mark.slow
def test_a_lost_node_resumes_bitwise_equal_to_an_uninterrupted_run(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")  # each step's line as it is printed
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    rng = random.Random(int(os.environ.get("KILL_SEED", "23")))
    port = free_port()  # the same commands (one endpoint) for every start, as a user reruns them

    _run_through(tmp_path / "base", port)
    assert committed(tmp_path / "base", "mlp")[-1].name == f"mlp-1_{STEPS}.ckpt"
    expected = every_tensor(committed(tmp_path / "base", "mlp")[-1])

    work = tmp_path / "killed"
    landed: Counter[str] = Counter()
    lost: Counter[tuple[str, int]] = Counter()
    for aim, victim in KILLS:
        for _ in range(3):  # a kill aimed between saves that kept finding one in flight aims again
            where = _lose_a_node(work, port, aim, victim, rng)
            landed[where] += 1
            lost[where, victim] += 1
            if where in (aim, "finished"):
                break
    report("two nodes, one lost", landed)
    assert landed["finished"] == 0, landed
    assert all(lost[kill] for kill in KILLS), f"each node lost mid-step and mid-save: {lost}"

    _run_through(work, port)  # both nodes again: the run ends
    final = committed(work, "mlp")[-1]
    assert final.name == f"mlp-1_{STEPS}.ckpt"
    left = [p.name for p in work.glob("*.ckpt") if not (p / "manifest.json").exists()]
    assert left == [], f"a killed save's leftovers outlived the next start: {left}"
    got = every_tensor(final)
    assert sorted(got) == sorted(expected)
    unequal = [name for name in expected if not got[name].equal(expected[name])]
    assert not unequal, f"differs from the uninterrupted run: {unequal}"
