"""Data: the MNIST idx reader, the seed's preprocessing, and a resumable batch sampler."""

from torchresume.data.dataset import ArrayDataset, create_dataset
from torchresume.data.mnist import default_mnist_dir, read_mnist
from torchresume.data.sampler import ResumableBatchSampler

__all__ = ["ArrayDataset", "ResumableBatchSampler", "create_dataset", "default_mnist_dir", "read_mnist"]
