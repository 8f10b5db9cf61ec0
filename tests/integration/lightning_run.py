"""A real Lightning Trainer.fit with torchresume's plugin, for tests/integration/test_lightning.py.

usage: python lightning_run.py RUN_DIR NUM_WORKERS [EPOCHS [ddp] [async] [stock]]
       torchrun --standalone --nproc-per-node 2 lightning_run.py RUN_DIR NUM_WORKERS EPOCHS ddp [async] [fork]

Trains a small MLP with dropout on a plain ``DataLoader(shuffle=True)`` whose dataset draws
random noise in ``__getitem__`` (in the workers when there are any), checkpointing every 2
steps into RUN_DIR through TorchResumeCheckpoint, validating at each epoch's end (whose DataLoader
draws from the global RNG too), and resumes with ``ckpt_path="last"``. Each
training step prints ``step N`` and appends ``N digest`` (the batch's bytes) to RUN_DIR/batches;
a finished run writes RUN_DIR/final.ckpt (weights, optimizer state, every RNG). With ``ddp``
it trains under Lightning's DDP strategy, one rank per torchrun process (gloo on CPU): rank r logs
its batches to RUN_DIR/batches-r and writes RUN_DIR/final-r.ckpt, rank 0 alone prints the steps,
and each rank ends with ``torchresume.distributed.end_process``; its DataLoader workers start from a
forkserver (forked from a rank they can hang at their start: ``fork_hazard``), or by fork with
``fork``. With ``async`` checkpoints are written in the background (``TorchResumeIO(async_save=True)``).
With ``stock`` the same run checkpoints the way stock Lightning does, for benchmarks/lightning_resume.py:
its own ``ModelCheckpoint`` (every 2 steps, ``save_last=True``) and checkpoint IO (``torch.save``
``.ckpt``), no torchresume plugin.
"""

from __future__ import annotations

import multiprocessing
import sys


def main() -> None:
    run_dir, workers = sys.argv[1], int(sys.argv[2])
    epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    options = sys.argv[4:]
    context = None
    if "ddp" in options and workers and "fork" not in options:
        # Workers forked from a rank can hang at their start (torchresume's fork_hazard says so):
        # the runs follow its advice, from a forkserver that has imported this script and the dataset.
        # Lightning stays out of it (lightning_fit.py, imported below): this script imports nothing
        # heavy, so the forkserver each rank starts at each launch costs a torch import, not Lightning's
        # on top (~4 s of CPU per rank and launch, 23 launches in the DDP kill test with workers).
        multiprocessing.set_forkserver_preload(["__main__", "tests.fault.dataloader_run"])
        context = "forkserver"
    from tests.integration.lightning_fit import fit
    fit(run_dir, workers, epochs, options, context)


if __name__ == "__main__":
    main()
