"""Batching: in-memory tensor datasets straight from device tensors (no per-sample collate), any
other map-style or iterable Dataset through a `DataLoader` whose shuffling is seeded per epoch;
with several ranks or loader workers, each one's share of the data."""

from __future__ import annotations

import itertools

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset, get_worker_info

from tuneloop.config.schema import LoaderConfig
from tuneloop.ranks import shard, split_stream, stream_share

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
                 shuffle: bool = False, seed: int = 0, device: str | torch.device = "cpu",
                 rank: int = 0, world_size: int = 1, even: bool = True):
        if len(inputs) != len(targets):
            raise ValueError(f"inputs and targets must have the same length, but got {len(inputs)} and {len(targets)}")
        self.device = torch.device(device)
        self.inputs = inputs.to(self.device)
        self.targets = targets.to(self.device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.rank, self.world_size, self.even = rank, world_size, even  # this rank's share (`tuneloop.ranks.shard`)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self._samples() // self.batch_size)

    def _samples(self) -> int:
        """How many samples this rank sees per epoch."""
        n, world = len(self.targets), self.world_size
        if world == 1:
            return n
        return -(-n // world) if self.even else len(range(self.rank, n, world))

    def __iter__(self):
        n = len(self.targets)
        if self.shuffle:
            generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
            order = torch.randperm(n, generator=generator).to(self.device)
        else:
            order = None
        if self.world_size > 1:  # the same permutation on every rank, each taking its share
            order = shard(order if order is not None else torch.arange(n, device=self.device),
                          self.rank, self.world_size, self.even)
            n = len(order)
        if order is not None:
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

    With `world_size` > 1, a map-style dataset gives this rank its indices (`ShardSampler`); an
    iterable one, with several ranks or loader workers, is read through a `StreamShard`: this rank's
    and each worker's share of its stream.
    """

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool, seed: int, rank: int = 0,
                 world_size: int = 1, even: bool = True, **options):
        if isinstance(dataset, IterableDataset):
            shuffle = False  # an iterable dataset orders its own samples (DataLoader refuses shuffle=True)
            if world_size > 1 or options.get("num_workers", 0) > 0:
                dataset = StreamShard(dataset, rank, world_size, even)
        elif world_size > 1:  # this rank's share, drawn from the same per-epoch order on every rank
            options["sampler"] = ShardSampler(len(dataset), shuffle, rank, world_size, even)
            shuffle = False
        super().__init__(dataset, batch_size=batch_size, shuffle=shuffle, generator=torch.Generator(), **options)
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.generator.manual_seed(epoch_seed(self.seed, epoch))  # the sampler and the workers' seeds draw from it
        if isinstance(self.sampler, ShardSampler):
            self.sampler.seed = epoch_seed(self.seed, epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        if isinstance(self.dataset, StreamShard):  # exact with workers too (each worker batches its own share)
            return self.dataset.batches(self.batch_size, self.drop_last, self.num_workers)
        return super().__len__()


class StreamShard(IterableDataset):
    """The share of an iterable dataset's stream that one rank and one loader worker iterate, so that
    each sample is read once over all of them.

    The rank's share is `tuneloop.ranks.split_stream` of the stream (the `rank`-th of each group of
    `world_size` samples; `even`, for training: an incomplete last group dropped, so that every rank
    has as many samples, and batches); a loader worker (`num_workers` > 0) takes every
    `num_workers`-th sample of that, from its id (torch's `get_worker_info`). Every rank and worker
    reads the whole stream and skips the rest: a stream whose samples are costly to make can split
    itself instead, and says so: `splits_by_rank = True` (its `__iter__` gives this rank its own
    share, as many samples on every rank for training), `splits_by_worker = True` (each loader
    worker its own, as torch's `get_worker_info` recipe and Hugging Face's streaming datasets do).
    A length, when the dataset has one, is that of this rank's share; `set_epoch` is passed on.
    """

    def __init__(self, dataset: IterableDataset, rank: int, world_size: int, even: bool):
        self.dataset, self.rank, self.world_size, self.even = dataset, rank, world_size, even
        self.by_rank = not getattr(dataset, "splits_by_rank", False)
        self.by_worker = not getattr(dataset, "splits_by_worker", False)

    def __iter__(self):
        samples = iter(self.dataset)
        if self.by_rank:
            samples = split_stream(samples, self.rank, self.world_size, self.even)
        worker = get_worker_info()
        if self.by_worker and worker is not None and worker.num_workers > 1:
            samples = itertools.islice(samples, worker.id, None, worker.num_workers)
        return samples

    def __len__(self) -> int:
        size = len(self.dataset)  # TypeError without one: the loader has no length either
        return stream_share(size, self.rank, self.world_size, self.even) if self.by_rank else size

    def batches(self, batch_size: int, drop_last: bool, workers: int) -> int:
        """The number of batches a DataLoader makes of this share with `workers` workers, each
        batching its own part (TypeError when the dataset has no length, or splits itself over the
        workers: their parts are then unknown here)."""
        size = len(self)
        if workers > 1 and not self.by_worker:
            raise TypeError("a stream that its loader workers split themselves has no known number of batches")
        parts = [len(range(w, size, workers)) for w in range(workers)] if workers > 1 else [size]
        return sum(n // batch_size if drop_last else -(-n // batch_size) for n in parts)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)


class ShardSampler(torch.utils.data.Sampler):
    """One rank's indices of a map-style dataset (DistributedSampler's split): a permutation drawn
    from `seed` (set per epoch by `EpochSeededDataLoader.set_epoch`), or the dataset's order, then
    `tuneloop.ranks.shard`."""

    def __init__(self, size: int, shuffle: bool, rank: int, world_size: int, even: bool):
        self.size, self.shuffle, self.rank, self.world_size, self.even = size, shuffle, rank, world_size, even
        self.seed = 0

    def __iter__(self):
        order = (torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed)) if self.shuffle
                 else torch.arange(self.size))
        return iter(shard(order, self.rank, self.world_size, self.even).tolist())

    def __len__(self) -> int:
        return len(shard(torch.arange(self.size), self.rank, self.world_size, self.even))


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int, device: str | torch.device,
                options: dict | None = None, collate_fn=None, rank: int = 0, world_size: int = 1,
                even: bool = True):
    """`TensorBatches` for a `TensorDataset` of two tensors with the default `options` and no
    `collate_fn`, else an `EpochSeededDataLoader` with them (whose batches the Trainer moves to the
    device). `options`: DataLoader keyword arguments (`run.loader_config`); memory is pinned only
    for a CUDA device, where it speeds up the copy. With `world_size` > 1 each rank iterates its
    share (`rank`), the same number of samples on every rank when `even` (training: DDP's steps pair
    up), else without repeats (validation: the sums over the ranks count each sample once). An
    iterable dataset's stream is split over the ranks and loader workers the same way (`StreamShard`)."""
    options = {**DEFAULT_OPTIONS, **(options or {})}
    if (isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2 and options == DEFAULT_OPTIONS
            and collate_fn is None):
        inputs, targets = dataset.tensors
        return TensorBatches(inputs, targets, batch_size, shuffle=shuffle, seed=seed, device=device,
                             rank=rank, world_size=world_size, even=even)
    if options["prefetch_factor"] is None:
        del options["prefetch_factor"]
    options["pin_memory"] = options["pin_memory"] and torch.device(device).type == "cuda"
    return EpochSeededDataLoader(dataset, batch_size, shuffle, seed, rank=rank, world_size=world_size, even=even,
                                 collate_fn=collate_fn, **options)
