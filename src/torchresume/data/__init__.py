"""Data position for exact resume: an in-memory dataset with a resumable batch sampler."""

from torchresume.data.dataset import ArrayDataset
from torchresume.data.sampler import ResumableBatchSampler

__all__ = ["ArrayDataset", "ResumableBatchSampler"]
