"""Batching: in-memory tensor datasets straight from device tensors (no per-sample collate), any
other map-style or iterable Dataset through a `DataLoader` whose shuffling is seeded per epoch."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from tuneloop.config.schema import LoaderConfig

DEFAULT_OPTIONS = LoaderConfig().model_dump()  # run.loader_config's defaults


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
    The workers' seeds come from the same generator, so random transforms in workers repeat per
    epoch too (with `persistent_workers`, workers keep their RNG from epoch to epoch instead: a
    resumed run's random transforms then differ). A dataset with `set_epoch` (an iterable one that
    shuffles itself) is told the epoch as well.
    """

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool, seed: int, **options):
        if isinstance(dataset, IterableDataset):
            shuffle = False  # an iterable dataset orders its own samples (DataLoader refuses shuffle=True)
        super().__init__(dataset, batch_size=batch_size, shuffle=shuffle, generator=torch.Generator(), **options)
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.generator.manual_seed(epoch_seed(self.seed, epoch))  # the sampler and the workers' seeds draw from it
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int, device: str | torch.device,
                options: dict | None = None, collate_fn=None):
    """`TensorBatches` for a `TensorDataset` of two tensors with the default `options` and no
    `collate_fn`, else an `EpochSeededDataLoader` with them (whose batches the Trainer moves to the
    device). `options`: DataLoader keyword arguments (`run.loader_config`); memory is pinned only
    for a CUDA device, where it speeds up the copy."""
    options = {**DEFAULT_OPTIONS, **(options or {})}
    if (isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2 and options == DEFAULT_OPTIONS
            and collate_fn is None):
        inputs, targets = dataset.tensors
        return TensorBatches(inputs, targets, batch_size, shuffle=shuffle, seed=seed, device=device)
    if options["prefetch_factor"] is None:
        del options["prefetch_factor"]
    options["pin_memory"] = options["pin_memory"] and torch.device(device).type == "cuda"
    return EpochSeededDataLoader(dataset, batch_size, shuffle, seed, collate_fn=collate_fn, **options)
