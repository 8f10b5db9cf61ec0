"""Shared fixtures (small models and optimizers with real state) and the suite's two tiers.

Tiers: the full tier (`bash scripts/test.sh`, what CI runs) is every test. The quick tier
(`bash scripts/test.sh --quick`, pytest's `-m "not full"`) is for the edit-test loop: every
module's unit tests, and from the modules that start real processes (training runs killed by
signals, torchrun jobs, the installed CLI, S3 servers) only the tests marked `quick`, one of each
kind. The modules of that second sort are listed below, each on purpose; a test lands in a tier
by this list and its `quick` mark, never by how long it happens to take.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Every process a test starts (training runs, torchrun ranks, the CLI) trains with one intra-op
# thread unless the test says otherwise: two tests run side by side on two cores, and OpenMP's
# spinning threads slow a step 20-30x when their cores are shared. Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch
import torch.distributed as dist
from torch import nn

# Modules whose tests start real processes or servers: the full tier only, except tests marked
# `quick`. Listed longest first: the workers are handed whole files in this order (see
# pytest_xdist_make_scheduler), so the long ones start early and the run ends evenly on both.
PROCESS_MODULES = (
    "tests/fault/test_resume_exact.py",
    "tests/integration/test_docs_blocks.py",
    "tests/integration/test_transformers.py",
    "tests/cli/test_real_files_cli.py",
    "tests/integration/test_examples.py",
    "tests/fault/test_dataloader_resume.py",
    "tests/integration/test_lightning.py",
    "tests/integration/test_lightning_round_three.py",
    "tests/integration/test_trainer_run_lock.py",
    "tests/storage/test_rclone_cli.py",
    "tests/fault/test_rng_kills.py",
    "tests/integration/test_s3_training.py",
    "tests/distributed/test_async_save.py",
    "tests/distributed/test_torchrun_parity.py",
    "tests/storage/test_directory_checkpoints.py",
    "tests/cli/test_user_story_cli.py",
    "tests/integration/test_benchmarks.py",
    "tests/fault/test_kill_during_save.py",
    "tests/distributed/test_restore_reads.py",
    "tests/distributed/test_resharding.py",
    "tests/distributed/test_damaged_newest.py",
    "tests/cli/test_mindspore_cli.py",
    "tests/fault/test_distributed_kills.py",
    "tests/fault/test_readme_loop_torchrun.py",
    "tests/fault/test_node_loss.py",
    "tests/distributed/test_deadline.py",
    "tests/cli/test_training_cli.py",
    "tests/attacks/test_confinement_cli.py",
    "tests/distributed/test_cli.py",
    "tests/distributed/test_sharded_as_one.py",
    "tests/distributed/test_elastic.py",
    "tests/distributed/test_faults.py",
    "tests/storage/test_run_lock.py",
    "tests/distributed/test_object_storage.py",
    "tests/distributed/test_two_nodes.py",
    "tests/distributed/test_torchrun_cli.py",
    "tests/integration/test_package.py",
    "tests/distributed/test_replicated.py",
    "tests/fault/test_out_of_space.py",
    "tests/integration/test_site_build.py",
    "tests/cli/test_new_user_round_two.py",
    "tests/distributed/test_torchrun_messages.py",
    "tests/distributed/test_lean_staging.py",
    "tests/attacks/test_fuzz_sample.py",
)


# From those modules, the quick tier keeps one test of each kind (tests/test_tiers.py checks each
# id still names a test): a kill-and-resume, a kill mid-save, every RNG, a DataLoader, out of space,
# a rank killed mid-save under torchrun, a hung rank's save aborted, a damaged newest passed over by
# every rank, a signal to an S3 run, the run lock, the CLI, MindSpore
# files, a directory checkpoint, an example, the package's import, Lightning's typed refusal, a
# Hugging Face Trainer killed.
QUICK = (
    "tests/fault/test_resume_exact.py::test_sigkill_then_same_command_is_bitwise_exact[sync-mid-epoch-12]",
    "tests/fault/test_kill_during_save.py::test_sigkill_mid_save_never_leaves_a_bad_file[sync]",
    "tests/fault/test_rng_kills.py::test_sigkills_resume_every_rng_bitwise[loop-sync]",
    "tests/fault/test_dataloader_resume.py::test_plain_dataloader_killed_once[True-0-12]",
    "tests/fault/test_out_of_space.py::test_enospc_on_a_real_small_filesystem",
    "tests/fault/test_out_of_space.py::test_training_stops_with_one_line_when_the_disk_is_full[sync]",
    "tests/distributed/test_faults.py::test_sigkill_of_one_rank_mid_save_commits_nothing",
    "tests/distributed/test_deadline.py::test_hung_rank_aborts_the_save_on_every_rank_sync_and_async",
    "tests/distributed/test_damaged_newest.py::"
    "test_a_newest_damaged_for_one_rank_is_skipped_by_every_rank[a shard part missing]",
    "tests/integration/test_s3_training.py::test_sigterm_saves_uploads_and_exits_143",
    "tests/storage/test_run_lock.py::test_second_process_is_refused_with_the_holder_named",
    "tests/cli/test_training_cli.py::test_train_eval_infer",
    "tests/cli/test_training_cli.py::test_bad_usage_is_exit_2",
    "tests/cli/test_new_user_round_two.py::test_version",
    "tests/cli/test_mindspore_cli.py::test_eval_a_mindspore_trained_lenet",
    "tests/storage/test_directory_checkpoints.py::test_manifest_damage_is_typed",
    "tests/integration/test_examples.py::test_quickstart",
    "tests/integration/test_package.py::test_import_loads_the_core_only",
    "tests/integration/test_lightning.py::test_unstorable_hyperparameter_is_a_typed_error_naming_its_key",
    "tests/integration/test_transformers.py::test_sigkills_then_same_command_is_bitwise_exact[sync]",
)


# Tests handed to a worker apart from the rest of their module. `--dist loadfile` (scripts/test.sh)
# keeps a module on one worker so the reference runs its tests share are made once; a long test that
# shares none with the rest of its module runs beside it instead of after it. Each is handed out
# just before its module.
ALONE = (
    "tests/integration/test_lightning.py::test_ddp_sigkills_of_the_whole_job_resume_bitwise[2]",
)


def _module_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def _scope(nodeid: str) -> str:
    """What one worker runs as a whole: a module, or a test of ALONE."""
    return nodeid if nodeid in ALONE else _module_of(nodeid)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: float(i) for i, name in enumerate(PROCESS_MODULES)}
    for item in items:
        if item.nodeid in QUICK:
            item.add_marker(pytest.mark.quick)
        elif _module_of(item.nodeid) in rank:
            item.add_marker(pytest.mark.full)

    def order(item: pytest.Item) -> float:
        place = rank.get(_module_of(item.nodeid), float(len(rank)))
        return place - 0.5 if item.nodeid in ALONE else place
    # Stable: within a module, and among unit-test modules, collection order is kept.
    items.sort(key=order)


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # optional: pytest -p no:xdist works too
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadfile` as scripts/test.sh runs it: each scope (_scope) to one worker, handed out in
    the order of the collection above. xdist's own order (the scopes with the most tests first) put
    the longest modules, which have few tests, last: one worker ran them alone at the end."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class InOrder(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _scope(nodeid)

    config.option.loadscopereorder = False
    return InOrder(config, log)


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.bn = nn.BatchNorm1d(8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


@pytest.fixture
def net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet()


@pytest.fixture
def trained(net: TinyNet) -> tuple[TinyNet, torch.optim.Optimizer]:
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(16, 4)).pow(2).mean().backward()
        opt.step()
    return net, opt


@pytest.fixture(autouse=True)
def _local_dirs_in_tmp(tmp_path, monkeypatch) -> None:
    """Staging and cache directories of remote runs go under the test's tmp dir, not ~/.cache."""
    monkeypatch.setenv("TORCHRESUME_STAGING", str(tmp_path / ".staging"))
    monkeypatch.setenv("TORCHRESUME_CACHE", str(tmp_path / ".cache"))


@pytest.fixture
def one_rank_group(tmp_path: Path) -> Iterator[None]:
    """A real process group of one rank (gloo) in this process: torchrun's code paths without a launch."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()
