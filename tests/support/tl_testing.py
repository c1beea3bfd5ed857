"""Code that test experiments import by path (put on PYTHONPATH for Ray workers by the tests)."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import IterableDataset, TensorDataset

from tuneloop.callbacks import TrainingCallback
from tuneloop.trainer import Trainer


def blobs(n: int = 240, features: int = 8, classes: int = 3, seed: int = 0):
    """A small separable classification problem: (train, val) TensorDatasets."""
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, features, generator=generator) * 3
    labels = torch.randint(0, classes, (n,), generator=generator)
    inputs = centers[labels] + torch.randn(n, features, generator=generator)
    cut = int(n * 0.75)
    return TensorDataset(inputs[:cut], labels[:cut]), TensorDataset(inputs[cut:], labels[cut:])


class Samples(IterableDataset):
    """The samples of a TensorDataset as a stream, in order, without a length (an iterable dataset)."""

    def __init__(self, dataset: TensorDataset):
        self.tensors = dataset.tensors

    def __iter__(self):
        return zip(*self.tensors)


def blob_streams(n: int = 240, **kwargs):
    """`blobs` as two streams (`Samples`): (train, val)."""
    return tuple(Samples(split) for split in blobs(n, **kwargs))


class InputLog(Trainer):
    """A Trainer that keeps the inputs of every training batch it trains on (`trained`, per batch)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.trained: list[torch.Tensor] = []

    def compute_loss(self, batch):
        if self.model.training:
            self.trained.append(batch[0].detach().clone())
        return super().compute_loss(batch)


class Probe(nn.Module):
    """A small MLP that behaves as told: mode ok, nan (outputs NaN), or raise (forward raises)."""

    def __init__(self, hidden: int = 16, mode: str = "ok", features: int = 8, classes: int = 3,
                 delay: float = 0.0, norm: bool = False):
        super().__init__()
        self.mode, self.delay = mode, delay
        middle = [nn.BatchNorm1d(hidden)] if norm else []  # norm: buffers (running statistics)
        self.net = nn.Sequential(nn.Linear(features, hidden), *middle, nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x):
        if self.mode == "raise":
            raise RuntimeError("Probe: forward failed on purpose")
        if self.delay:
            time.sleep(self.delay)
        out = self.net(x)
        return out * float("nan") if self.mode == "nan" else out


def confidence(outputs, targets):
    """Mean softmax probability of the right class: a metric to maximize, continuous (no ties).
    NaN for a Probe built with `classes=4` on the 3-class blobs: a finite loss, a broken metric."""
    if outputs.shape[1] == 4:
        return outputs.new_tensor(float("nan"))
    return outputs.softmax(dim=1).gather(1, targets[:, None]).mean()


class MarkerCallback(TrainingCallback):
    """Writes one JSON file per training into `directory`: the epochs it saw and the first train loss."""

    priority = 60

    def __init__(self, directory: str):
        self.directory = Path(directory)
        self.epochs: list[int] = []
        self.first_train_loss = None

    def on_epoch_end(self, trainer, *, epoch, train_loss, **kwargs):
        self.epochs.append(epoch)
        if self.first_train_loss is None:
            self.first_train_loss = train_loss

    def on_train_end(self, trainer, **kwargs):
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / f"{uuid.uuid4().hex}.json").write_text(json.dumps(
            {"pid": os.getpid(), "epochs": self.epochs, "first_train_loss": self.first_train_loss,
             "params": next(trainer.model.parameters()).flatten()[:4].tolist()}))


class EpochLog(TrainingCallback):
    """Appends one line per trained epoch to `path` (shared by all trials): what was really trained."""

    priority = 60

    def __init__(self, path: str):
        self.path = path

    def on_epoch_end(self, trainer, *, epoch, train_loss, val_loss, **kwargs):
        with open(self.path, "a") as handle:
            handle.write(json.dumps({"pid": os.getpid(), "epoch": epoch, "params": trainer.optimizer.param_groups[0]["lr"],
                                     "val_loss": val_loss}) + "\n")


def digits_trainer(digits, callbacks, lr=0.05):
    """A small seeded Trainer on the digits (train, val) datasets, with its two loaders."""
    from tuneloop.training.data import make_loader
    from tuneloop.metrics import accuracy
    from tuneloop.recipes.digits import MLP
    from tuneloop.trainer import Trainer

    torch.manual_seed(0)
    model = MLP(hidden=32, layers=1, dropout=0.1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.5)
    trainer = Trainer(model, optimizer, scheduler, torch.nn.CrossEntropyLoss(), callbacks,
                      metrics={"accuracy": accuracy})
    train_set, val_set = digits
    return trainer, make_loader(train_set, 128, True, 0, "cpu"), make_loader(val_set, 512, False, 0, "cpu")


def count_reads(monkeypatch):
    """Count every way of reading a tensor's value on the host: returns {"n": count}, live."""
    counts = {"n": 0}
    for name in ("item", "tolist", "__float__", "__bool__", "__int__", "__index__", "numpy", "cpu"):
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, **kwargs):
            counts["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    return counts


class Warner(TrainingCallback):
    """Warns once per epoch through Python's warnings (to the trial's stderr) and prints a line
    (inside a Tune trial)."""

    def on_epoch_end(self, trainer, *, epoch, **kwargs):
        import warnings

        from ray import tune

        # the trial id in the text: Python shows a warning once per text and place, and actors are reused
        warnings.warn(f"probe warning at epoch {epoch} of {tune.get_context().get_trial_id()}", UserWarning,
                      stacklevel=1)
        print(f"probe says epoch {epoch} ended", flush=True)


class KnobCallback(TrainingCallback):
    """Reports its constructor argument `knob` as a metric of every epoch (`knob`): what a swept
    callback argument really was inside the trial."""

    def __init__(self, knob: float = 0.0):
        self.knob = float(knob)

    def on_val_end(self, trainer, *, metrics, **kwargs):
        metrics["knob"] = self.knob


def assert_state_dicts_equal(a, b, path="state"):
    """Bitwise equality of nested state dicts (tensors with torch.equal and the same dtype)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_state_dicts_equal(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_state_dicts_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b or (a != a and b != b), f"{path}: {a!r} != {b!r}"
