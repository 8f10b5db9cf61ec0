"""The demo's pictures: the seed's prediction grid and the loss/accuracy curves."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _pyplot():  # type: ignore[no-untyped-def]
    try:
        import matplotlib
    except ImportError:
        raise ImportError("drawing needs matplotlib: pip install 'torchresume[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def prediction_grid(images: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor, out: str) -> None:
    """Digits titled "prediction: P, truth: T", blue when right, red when wrong (as in the seed)."""
    plt = _pyplot()
    n = len(images)
    cols = 4
    rows = (n + cols - 1) // cols
    fig = plt.figure(figsize=(3 * cols, 3 * rows))
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(images[i].squeeze().numpy(), cmap="gray")
        color = "blue" if int(preds[i]) == int(labels[i]) else "red"
        ax.set_title(f"prediction: {int(preds[i])}, truth: {int(labels[i])}", color=color)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def curves(steps: Sequence[int], losses: Sequence[float], acc_points: Sequence[tuple[int, float]],
           resume_step: int | None, out: str) -> None:
    """Training loss over global steps, evaluation accuracy, and where training resumed."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    ax1.plot(steps, losses, lw=0.8)
    ax1.set_xlabel("global step")
    ax1.set_ylabel("training loss (mean of 50 steps)")
    ax1.set_yscale("log")
    if resume_step is not None:
        for ax in (ax1, ax2):
            ax.axvline(resume_step, color="gray", ls="--", label="resumed at lr 0.001")
    ax2.plot([s for s, _ in acc_points], [a for _, a in acc_points], "o-")
    ax2.set_xlabel("global step")
    ax2.set_ylabel("test accuracy")
    ax2.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
