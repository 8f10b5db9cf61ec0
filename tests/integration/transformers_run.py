"""A real Hugging Face Trainer run for tests/integration/test_transformers.py (one process).

``python transformers_run.py RUN_DIR [sync|async]`` trains a tiny BERT (built from a config, with
dropout) for 3 epochs on 32 shuffled samples, batches of 4 per process (8 optimizer steps an epoch
in one process, 4 under ``torchrun --nproc-per-node 2``), a TorchResumeTrainer checkpoint every 2
steps (2 kept), always with ``train(resume_from_checkpoint=True)``: the same command starts and
restarts the run. Rank 0 prints ``step N`` after each step (the kill harness counts them) and every
rank appends ``STEP RANK id id id id`` to ``RUN_DIR/seen`` for each batch it trains on, one write
per line (a SIGKILL never leaves half a line). Sample ``i``'s first token is ``i + 10``.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from torchresume.integrations.transformers import TorchResumeTrainer

SAMPLES, BATCH, EPOCHS, SAVE_EVERY, OFFSET = 32, 4, 3, 2, 10
STEPS = SAMPLES // BATCH * EPOCHS


def dataset() -> list[dict[str, torch.Tensor]]:
    return [{"input_ids": torch.tensor([i + OFFSET] + [(i * 7 + k) % 60 + 1 for k in range(7)]),
             "labels": torch.tensor(i % 2)} for i in range(SAMPLES)]


def model() -> BertForSequenceClassification:
    set_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16)
    return BertForSequenceClassification(config)


def arguments(run: str) -> TrainingArguments:
    return TrainingArguments(run, num_train_epochs=EPOCHS, per_device_train_batch_size=BATCH,
                             save_strategy="steps", save_steps=SAVE_EVERY, save_total_limit=2,
                             logging_steps=4, learning_rate=1e-3, warmup_steps=2, seed=0,
                             report_to=[], use_cpu=True, disable_tqdm=True, dataloader_num_workers=0)


class Recording(TorchResumeTrainer):
    """Appends the ids of every batch it trains on to RUN_DIR/seen."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[no-untyped-def]
        ids = (inputs["input_ids"][:, 0] - OFFSET).tolist()
        line = f"{self.state.global_step + 1} {self.args.process_index} {' '.join(map(str, ids))}\n".encode()
        fd = os.open(os.path.join(self.args.output_dir, "seen"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


class Progress(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if state.is_world_process_zero:
            print(f"step {state.global_step}", flush=True)


def main(run: str, mode: str = "sync") -> None:
    torch.use_deterministic_algorithms(True)
    trainer = Recording(model=model(), args=arguments(run), train_dataset=dataset(), callbacks=[Progress()],
                        async_save=mode == "async")
    out = trainer.train(resume_from_checkpoint=True)
    if trainer.is_world_process_zero():
        print(f"summary {out.global_step}", flush=True)
    if torch.distributed.is_initialized():  # gloo's rare SIGABRT in the interpreter's teardown
        from torchresume.train.distributed import end_process
        end_process(0)


if __name__ == "__main__":
    main(*sys.argv[1:])
