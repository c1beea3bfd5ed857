"""User code with the mistakes `tuneloop validate` (and `tuneloop sweep`'s preflight) must catch:
data loaders returning mismatched shapes or an empty split, models whose output does not fit
the criterion. Imported by path from the experiment files of tests/test_bad_input.py."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

FEATURES, CLASSES = 8, 3


def _blobs(n: int):
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, FEATURES, generator=generator), torch.randint(0, CLASSES, (n,), generator=generator)


def good_data():
    """48 train / 16 val samples of 8 features, 3 classes."""
    x, y = _blobs(64)
    return TensorDataset(x[:48], y[:48]), TensorDataset(x[48:], y[48:])


class _Unchecked(TensorDataset):
    """A TensorDataset built without TensorDataset's length check (as hand-made datasets are)."""

    def __init__(self, *tensors):
        self.tensors = tensors

    def __len__(self):
        return len(self.tensors[0])


def mismatched_lengths():
    """31 targets for 32 inputs in the training split."""
    x, y = _blobs(48)
    return _Unchecked(x[:32], y[:31]), TensorDataset(x[32:], y[32:])


def raises_in_constructor():
    """TensorDataset itself refuses tensors of different lengths (AssertionError)."""
    x, y = _blobs(48)
    return TensorDataset(x[:32], y[:31]), TensorDataset(x[32:], y[32:])


def empty_train():
    x, y = _blobs(16)
    return TensorDataset(x[:0], y[:0]), TensorDataset(x, y)


def empty_val():
    x, y = _blobs(16)
    return TensorDataset(x, y), TensorDataset(x[:0], y[:0])


def wrong_features():
    """Inputs of 5 features for a model that takes 8."""
    x, y = _blobs(48)
    return TensorDataset(x[:32, :5], y[:32]), TensorDataset(x[32:, :5], y[32:])


class _Pairs(Dataset):
    """A map-style dataset (not a TensorDataset): goes through the DataLoader path."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        return self.x[index], self.y[index]


def ragged_samples():
    """A map-style dataset whose samples have different shapes: the default collate fails."""
    x, y = _blobs(16)
    samples = [(x[i, : 8 - (i % 2)], y[i]) for i in range(16)]

    class Ragged(Dataset):
        def __len__(self):
            return len(samples)

        def __getitem__(self, index):
            return samples[index]

    return Ragged(), _Pairs(x, y)


def not_a_pair():
    """Returns one dataset instead of (train, val)."""
    x, y = _blobs(16)
    return TensorDataset(x, y)


class Net(nn.Module):
    """A linear classifier: `outputs` logits (3 fits the data), `squeeze` drops the class axis."""

    def __init__(self, outputs: int = CLASSES, squeeze: bool = False):
        super().__init__()
        self.lin = nn.Linear(FEATURES, outputs)
        self.squeeze = squeeze

    def forward(self, x):
        out = self.lin(x)
        return out.sum(-1) if self.squeeze else out


class _Dicts(_Pairs):
    """Samples as dicts (as Hugging Face datasets give them): batches are dicts."""

    def __getitem__(self, index):
        return {"features": self.x[index], "labels": self.y[index]}


def dict_batches():
    """Dict batches, which the default Trainer.compute_loss (a pair) cannot take."""
    x, y = _blobs(64)
    return _Dicts(x[:48], y[:48]), _Dicts(x[48:], y[48:])


def identity(samples):
    """A collate function that leaves the list of samples as it is: not a batch."""
    return samples


from tuneloop.trainer import Trainer  # noqa: E402  (the user's trainers below)


class DictTrainer(Trainer):
    """A correct custom step on dict batches."""

    def compute_loss(self, batch):
        logits = self.model(batch["features"])
        return nn.functional.cross_entropy(logits, batch["labels"]), logits, batch["labels"]


class TwoValueTrainer(Trainer):
    """compute_loss returns (loss, outputs): the targets are missing."""

    def compute_loss(self, batch):
        logits = self.model(batch["features"])
        return nn.functional.cross_entropy(logits, batch["labels"]), logits


class KeyErrorTrainer(Trainer):
    """compute_loss reads a key the batch does not have."""

    def compute_loss(self, batch):
        return self.model(batch["input_ids"]).sum(), None, None


class NotATrainer:
    """A class that is not a Trainer."""


from tuneloop.callbacks import TrainingCallback  # noqa: E402


class ClipAt(TrainingCallback):
    """A user callback with one keyword argument."""

    def __init__(self, max_norm: float = 1.0):
        self.max_norm = max_norm
