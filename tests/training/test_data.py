"""TensorBatches and make_loader: per-(seed, epoch) shuffling, full coverage, DataLoader fallback."""

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from tuneloop.training.data import EpochSeededDataLoader, TensorBatches, epoch_seed, make_loader


def epoch_order(loader, epoch):
    loader.set_epoch(epoch)
    return torch.cat([y for _, y in loader]).tolist()


def labelled(n):
    """Inputs whose value is the sample's index, so a batch can be checked for intact pairs."""
    return torch.arange(n).float().unsqueeze(1), torch.arange(n)


def test_shuffled_batches_are_a_permutation_covering_each_sample_once():
    x, y = labelled(50)
    loader = TensorBatches(x, y, 8, shuffle=True, seed=1)
    assert len(loader) == 7
    for epoch in range(5):
        order = epoch_order(loader, epoch)
        assert sorted(order) == list(range(50)) and order != list(range(50))
        assert [len(t) for _, t in loader] == [8] * 6 + [2]
    for inputs, targets in loader:
        assert torch.equal(inputs.squeeze(1).long(), targets)  # pairs stay together


def test_shuffling_is_deterministic_per_seed_and_epoch_and_differs_between_epochs():
    x, y = labelled(50)
    loader = TensorBatches(x, y, 8, shuffle=True, seed=1)
    orders = [epoch_order(loader, epoch) for epoch in range(4)]
    assert len({tuple(o) for o in orders}) == 4  # every epoch its own order
    assert epoch_order(loader, 0) == orders[0]  # same (seed, epoch) → same order, in any sequence
    assert [epoch_order(loader, 2), epoch_order(loader, 2)] == [orders[2]] * 2  # iterating again repeats
    fresh = TensorBatches(x, y, 8, shuffle=True, seed=1)  # a resumed run's new loader
    assert epoch_order(fresh, 3) == orders[3]
    assert epoch_order(TensorBatches(x, y, 8, shuffle=True, seed=2), 0) != orders[0]  # the seed matters
    assert epoch_order(TensorBatches(x, y, 16, shuffle=True, seed=1), 1) == orders[1]  # batch size does not


def test_the_shuffle_does_not_touch_global_rng():
    x, y = labelled(20)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    list(TensorBatches(x, y, 4, shuffle=True, seed=0))
    assert torch.equal(torch.rand(3), expected)


def test_unshuffled_keeps_order_and_last_partial_batch():
    x, y = torch.randn(10, 2), torch.arange(10)
    loader = TensorBatches(x, y, 4)
    assert [t.tolist() for _, t in loader] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    loader.set_epoch(7)
    assert epoch_order(loader, 7) == list(range(10))  # the epoch only matters when shuffling
    assert len(TensorBatches(x, y, 5)) == 2 and len(TensorBatches(x, y, 64)) == 1
    assert [len(t) for _, t in TensorBatches(x, y, 64)] == [10]


def test_large_and_negative_seeds_work():
    x, y = labelled(12)
    for seed in (2**62, -7, 0):
        order = epoch_order(TensorBatches(x, y, 5, shuffle=True, seed=seed), 3)
        assert sorted(order) == list(range(12))
    assert 0 <= epoch_seed(2**62, 5) < 2**64 and epoch_seed(3, 4) != epoch_seed(3, 5)


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="same length"):
        TensorBatches(torch.randn(5, 2), torch.arange(4), 2)


def test_tensors_are_put_on_the_device():
    loader = TensorBatches(torch.randn(4, 2, dtype=torch.float64), torch.arange(4), 2, device="cpu")
    assert loader.inputs.device.type == "cpu" and loader.inputs.dtype == torch.float64
    assert all(b[0].device.type == "cpu" for b in loader)


class Squares(Dataset):
    def __init__(self, n=6):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.tensor([float(i)]), torch.tensor(i * i)


def test_make_loader_picks_tensor_batches_for_a_two_tensor_dataset():
    x, y = labelled(10)
    loader = make_loader(TensorDataset(x, y), 4, True, 3, "cpu")
    assert isinstance(loader, TensorBatches) and loader.shuffle and loader.seed == 3
    reference = TensorBatches(x, y, 4, shuffle=True, seed=3)
    assert epoch_order(loader, 2) == epoch_order(reference, 2)


def test_make_loader_falls_back_to_a_dataloader():
    loader = make_loader(Squares(), 4, False, 0, "cpu")
    assert isinstance(loader, DataLoader) and [len(t) for _, t in loader] == [4, 2]
    assert torch.cat([t for _, t in loader]).tolist() == [0, 1, 4, 9, 16, 25]
    three = TensorDataset(torch.randn(5, 2), torch.arange(5), torch.arange(5))  # not (inputs, targets)
    assert isinstance(make_loader(three, 2, False, 0, "cpu"), DataLoader)


def test_the_dataloader_fallback_shuffles_per_seed_and_epoch():
    loader = make_loader(Squares(20), 6, True, 11, "cpu")
    assert isinstance(loader, EpochSeededDataLoader)
    orders = [epoch_order(loader, epoch) for epoch in range(3)]
    for order in orders:
        assert sorted(order) == [i * i for i in range(20)]
    assert len({tuple(o) for o in orders}) == 3
    assert epoch_order(loader, 1) == orders[1]
    resumed = make_loader(Squares(20), 6, True, 11, "cpu")
    assert epoch_order(resumed, 2) == orders[2]  # a resumed run sees the batches of that epoch
    assert epoch_order(make_loader(Squares(20), 6, True, 12, "cpu"), 0) != orders[0]


def test_the_dataloader_fallback_trains_in_a_trainer():
    from tuneloop.trainer import Trainer

    model = torch.nn.Linear(1, 1)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=1e-4), None,
                      lambda out, y: torch.nn.functional.mse_loss(out.squeeze(1), y.float()), [])
    value = trainer.train(make_loader(Squares(10), 4, True, 0, "cpu"), make_loader(Squares(10), 4, False, 0, "cpu"), 2)
    assert value == value and value > 0


# --- loader options, collate functions, workers, iterable datasets -----------------------------

class Augmented(Dataset):
    """A map-style dataset with a random transform drawn from torch's RNG (in the worker that loads it)."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        return {"x": torch.tensor([float(index)]), "noise": torch.rand(1), "y": torch.tensor(index)}


def pairs(samples):
    """A collate function: dict samples → (inputs with noise, labels)."""
    x = torch.stack([s["x"] + 0 * s["noise"] for s in samples])
    return torch.cat([x, torch.stack([s["noise"] for s in samples])], dim=1), torch.stack([s["y"] for s in samples])


def epoch_batches(loader, epoch):
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_workers_and_a_collate_function_repeat_each_epoch_exactly_as_a_fresh_loader_does():
    """A resumed run builds a new loader and starts at epoch k: it must see what the first run saw
    in epoch k, order and worker-side randomness alike."""
    options = {"num_workers": 2, "drop_last": True}
    first = make_loader(Augmented(37), 8, shuffle=True, seed=5, device="cpu", options=options, collate_fn=pairs)
    assert isinstance(first, EpochSeededDataLoader) and first.num_workers == 2 and first.drop_last
    seen = [epoch_batches(first, epoch) for epoch in range(3)]
    assert [len(b) for b in seen] == [4, 4, 4]  # 37 samples, batches of 8, the partial one dropped
    assert [y.tolist() for _, y in seen[0]] != [y.tolist() for _, y in seen[1]]
    resumed = make_loader(Augmented(37), 8, shuffle=True, seed=5, device="cpu", options=options, collate_fn=pairs)
    again = epoch_batches(resumed, 2)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(seen[2], again))


def test_a_tensor_dataset_with_loader_options_goes_through_a_dataloader():
    x, y = labelled(20)
    assert isinstance(make_loader(TensorDataset(x, y), 4, True, 0, "cpu"), TensorBatches)
    assert isinstance(make_loader(TensorDataset(x, y), 4, True, 0, "cpu", options={"drop_last": True}),
                      EpochSeededDataLoader)
    assert isinstance(make_loader(TensorDataset(x, y), 4, True, 0, "cpu", collate_fn=pairs), EpochSeededDataLoader)
    pinned = make_loader(TensorDataset(x, y), 4, True, 0, "cpu", options={"pin_memory": True})
    assert not pinned.pin_memory  # only for a CUDA device


class Stream(torch.utils.data.IterableDataset):
    """An iterable dataset without a length that orders its own samples per epoch."""

    def __init__(self, n):
        self.n, self.epoch = n, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.epoch))
        for index in order.tolist():
            yield torch.tensor([float(index)]), torch.tensor(index % 2)


def test_an_iterable_dataset_is_told_the_epoch_and_trains():
    from tuneloop.trainer import Trainer

    loader = make_loader(Stream(30), 8, shuffle=True, seed=0, device="cpu")
    assert epoch_order(loader, 1) != epoch_order(loader, 2)
    model = torch.nn.Linear(1, 2)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), None, torch.nn.CrossEntropyLoss(),
                      accumulate_steps=3)  # 4 batches, no length: the last step has one batch
    assert torch.isfinite(torch.tensor(trainer.train(loader, make_loader(Stream(10), 8, False, 0, "cpu"), 2)))


def test_drop_last_drops_only_training_batches():
    from tuneloop.config.schema import RunConfig
    from tuneloop.training.build import build_loaders

    run = RunConfig.model_validate({"name": "d", "data": "x.y", "net": "x.y", "optimizer": "x.y", "epochs": 1,
                                    "batch_size": 8, "val_batch_size": 64, "loader_config": {"drop_last": True}})
    x, y = labelled(20)
    loaders = build_loaders(run, TensorDataset(x, y), TensorDataset(x, y), torch.device("cpu"))
    assert sum(len(t) for _, t in loaders.train) == 16  # 20 samples in batches of 8: the partial one dropped
    assert sum(len(t) for _, t in loaders.val) == 20  # one partial batch of 20 < 64, kept


class Numbered(torch.utils.data.IterableDataset):
    """The samples 0 … n-1 in order, with a length when `sized`; with `splits_by_worker`, its
    `__iter__` gives each loader worker its own share itself (torch's get_worker_info recipe)."""

    def __init__(self, n, sized=True, splits_by_worker=False):
        self.n, self.sized, self.splits_by_worker = n, sized, splits_by_worker

    def __len__(self):
        if not self.sized:
            raise TypeError("no length")
        return self.n

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        start, step = (worker.id, worker.num_workers) if self.splits_by_worker and worker else (0, 1)
        return ((torch.tensor([float(i)]), torch.tensor(i)) for i in range(start, self.n, step))


def shares(dataset, workers, even, world=2, batch_size=4):
    """Per rank: (the samples its loader gives, its batches, len(loader) or None)."""
    result = []
    for rank in range(world):
        loader = make_loader(dataset, batch_size, True, 0, "cpu", options={"num_workers": workers}, rank=rank,
                             world_size=world, even=even)
        batches = [y.tolist() for _, y in loader]
        try:
            length = len(loader)
        except TypeError:
            length = None
        result.append(([i for batch in batches for i in batch], len(batches), length))
    return result


@pytest.mark.parametrize("workers", [0, 2])
def test_a_stream_is_split_over_ranks_and_loader_workers_each_sample_once(workers):
    """23 samples on 2 ranks (and 2 loader workers): training takes 11 pairs, the 23rd sample (an
    incomplete pair) dropped, the same number of batches on both ranks; validation takes every
    sample once. The length is the batches' number, workers' partial batches included."""
    train = shares(Numbered(23), workers, even=True)
    assert sorted(train[0][0] + train[1][0]) == list(range(22))
    assert sorted(train[0][0]) == list(range(0, 22, 2)) and train[0][1] == train[1][1]
    val = shares(Numbered(23), workers, even=False)
    assert sorted(val[0][0] + val[1][0]) == list(range(23))
    for samples, batches, length in train + val:
        assert length == batches  # 2 workers: 6 and 5 samples → 2 + 2 batches of at most 4
    assert [b for _, b, _ in train] == ([3, 3] if workers == 0 else [4, 4])
    assert shares(Numbered(23, sized=False), workers, even=True)[1][2] is None  # no length: none made up


def test_loader_workers_of_one_process_do_not_repeat_a_stream():
    """Without the split each of the 2 workers would give the whole stream (every sample twice)."""
    [(samples, batches, length)] = shares(Numbered(10), 2, even=True, world=1)
    assert sorted(samples) == list(range(10)) and batches == length == 4  # 5 samples a worker: 2 batches each


def test_a_stream_that_splits_itself_over_its_workers_is_split_over_the_ranks_only():
    """`splits_by_worker`: each worker's own share (torch's recipe) split over the ranks, per worker:
    no sample twice, as many on both ranks; the batches' number is not known in advance."""
    train = shares(Numbered(23, splits_by_worker=True), 2, even=True)
    samples = train[0][0] + train[1][0]
    assert len(samples) == len(set(samples)) == 22 and len(train[0][0]) == len(train[1][0])
    assert set(range(23)) - set(samples) == {21}  # worker 0 has 12 samples (0, 2, …), worker 1 11: its last dropped
    assert train[0][2] is None and train[0][1] == train[1][1]
