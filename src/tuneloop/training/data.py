"""Batching of in-memory datasets straight from device tensors (no per-sample collate)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffling seed of one epoch: a function of (seed, epoch) only, within torch's seed range."""
    return (seed * 1_000_003 + epoch) % (1 << 64)


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
            generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
            order = torch.randperm(n, generator=generator).to(self.device)
            inputs, targets = self.inputs[order], self.targets[order]
        else:
            inputs, targets = self.inputs, self.targets
        for start in range(0, n, self.batch_size):
            yield inputs[start:start + self.batch_size], targets[start:start + self.batch_size]


class EpochSeededDataLoader(DataLoader):
    """A `DataLoader` whose shuffle order depends only on `seed` and the epoch (`set_epoch`).

    Like `TensorBatches`, so a resumed run sees the batches an uninterrupted one would have seen.
    """

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool, seed: int):
        super().__init__(dataset, batch_size=batch_size, shuffle=shuffle, generator=torch.Generator())
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.generator.manual_seed(epoch_seed(self.seed, epoch))  # the sampler draws from this generator


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int, device: str | torch.device):
    """`TensorBatches` for a `TensorDataset` of two tensors, else an `EpochSeededDataLoader`
    (whose batches the Trainer moves to the device)."""
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        inputs, targets = dataset.tensors
        return TensorBatches(inputs, targets, batch_size, shuffle=shuffle, seed=seed, device=device)
    return EpochSeededDataLoader(dataset, batch_size, shuffle, seed)
