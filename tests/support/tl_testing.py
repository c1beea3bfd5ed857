"""Code that test experiments import by path (put on PYTHONPATH for Ray workers by the tests)."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from tuneloop.callbacks import TrainingCallback


def blobs(n: int = 240, features: int = 8, classes: int = 3, seed: int = 0):
    """A small separable classification problem: (train, val) TensorDatasets."""
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, features, generator=generator) * 3
    labels = torch.randint(0, classes, (n,), generator=generator)
    inputs = centers[labels] + torch.randn(n, features, generator=generator)
    cut = int(n * 0.75)
    return TensorDataset(inputs[:cut], labels[:cut]), TensorDataset(inputs[cut:], labels[cut:])


class Probe(nn.Module):
    """A small MLP that behaves as told: mode ok, nan (outputs NaN), or raise (forward raises)."""

    def __init__(self, hidden: int = 16, mode: str = "ok", features: int = 8, classes: int = 3,
                 delay: float = 0.0):
        super().__init__()
        self.mode, self.delay = mode, delay
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x):
        if self.mode == "raise":
            raise RuntimeError("Probe: forward failed on purpose")
        if self.delay:
            time.sleep(self.delay)
        out = self.net(x)
        return out * float("nan") if self.mode == "nan" else out


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
