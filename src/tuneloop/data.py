"""Batching of in-memory datasets straight from device tensors (no per-sample collate)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset


class TensorBatches:
    """Iterates `(inputs, targets)` batches as index slices of tensors already on `device`.

    Shuffling draws one permutation per epoch from `seed` and the epoch number
    (`set_epoch`, as `DistributedSampler` does), so a resumed run sees the same batches.
    """

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int,
                 shuffle: bool = False, seed: int = 0, device: str | torch.device = "cpu"):
        if len(inputs) != len(targets):
            raise ValueError(f"inputs and targets must have the same length, but got {len(inputs)} and {len(targets)}")
        self.device = torch.device(device)
        self.inputs = inputs.to(self.device)
        self.targets = targets.to(self.device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.targets) // self.batch_size)

    def __iter__(self):
        n = len(self.targets)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(n, generator=generator).to(self.device)
            inputs, targets = self.inputs[order], self.targets[order]
        else:
            inputs, targets = self.inputs, self.targets
        for start in range(0, n, self.batch_size):
            yield inputs[start:start + self.batch_size], targets[start:start + self.batch_size]


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int, device: str | torch.device):
    """`TensorBatches` for a `TensorDataset` of two tensors, else a seeded `DataLoader`."""
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        inputs, targets = dataset.tensors
        return TensorBatches(inputs, targets, batch_size, shuffle=shuffle, seed=seed, device=device)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle,
                      generator=torch.Generator().manual_seed(seed))
