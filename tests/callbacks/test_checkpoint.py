"""CheckpointCallback standalone: periodic saves, the last epoch, keep_last_k by epoch number,
best/ by monitor and mode, and failed saves that leave the earlier checkpoints intact."""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from tuneloop.callbacks import (CheckpointCallback, EarlyStoppingCallback, NaNDetectionCallback,
                                TrainingCallback)
from tuneloop.checkpoints import load_state
from tuneloop.training.data import TensorBatches
from tuneloop.trainer import Trainer


class ScriptedLoss(nn.Module):
    """A user criterion: cross-entropy while training, a scripted value per epoch in validation."""

    def __init__(self, values):
        super().__init__()
        self.values = values
        self.epoch = 0
        self.ce = nn.CrossEntropyLoss()

    def forward(self, outputs, targets):
        if torch.is_grad_enabled() or self.values is None:
            return self.ce(outputs, targets)
        return outputs.new_tensor(self.values[self.epoch])


class Script(TrainingCallback):
    """Tells the scripted criterion which epoch is being validated."""

    priority = 1

    def __init__(self, criterion):
        self.criterion = criterion

    def on_val_begin(self, trainer, *, epoch, **kwargs):
        self.criterion.epoch = epoch


class Seen(TrainingCallback):
    """After the checkpoint (99): the epoch's checkpoint dir and a copy of the model weights."""

    priority = 99

    def __init__(self):
        self.checkpoints, self.weights = [], []

    def on_epoch_end(self, trainer, *, epoch, **kwargs):
        self.checkpoints.append(trainer._epoch_checkpoint)
        self.weights.append({k: v.clone() for k, v in trainer.model.state_dict().items()})


def run(tmp_path, epochs, values=None, extra=(), **kwargs):
    """Train a small model for `epochs` with a CheckpointCallback(tmp_path/"ck", **kwargs).

    `values`: scripted val_loss per epoch; the metric `val_score` is its negative.
    """
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    criterion = ScriptedLoss(values)
    seen = Seen()
    callback = CheckpointCallback(tmp_path / "ck", **kwargs)
    score = {"score": lambda outputs, targets: -criterion(outputs, targets)}
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), None, criterion,
                      [Script(criterion), callback, seen, *extra], metrics=score)
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    trainer.train(TensorBatches(x, y, 8, shuffle=True), TensorBatches(x, y, 32), epochs)
    return tmp_path / "ck", seen


def names(directory):
    """Every entry, hidden ones (temporary files and folders) included."""
    return sorted(p.name for p in directory.iterdir())


def assert_same_weights(state, weights):
    assert state.keys() == weights.keys()
    for key in weights:
        assert torch.equal(state[key], weights[key]), key


@pytest.mark.parametrize("background", [False, True], ids=["foreground", "background"])
def test_keep_last_k_by_epoch_number_past_ten(tmp_path, background):
    directory, seen = run(tmp_path, 12, keep_last_k=3, background=background)
    # by number epoch_9 < epoch_10 < epoch_11; by name "epoch_10" < "epoch_11" < "epoch_9" would keep 9
    # and delete 10 after epoch_11 was written
    assert names(directory) == ["best", "epoch_10", "epoch_11", "epoch_9"]
    assert seen.checkpoints == [str(directory / f"epoch_{e}") for e in range(12)]
    for epoch in (9, 10, 11):
        state = load_state(directory / f"epoch_{epoch}")
        assert state["epoch"] == epoch
        assert_same_weights(state["model"], seen.weights[epoch])
    assert names(directory / "epoch_10") == ["state.pt"]
    best = load_state(directory / "best")["epoch"]
    assert best == 11  # the val loss of plain gradient descent on its training set falls every epoch
    # a best that is also a periodic checkpoint shares its file (a hard link, not a second write)
    assert os.path.samefile(directory / "best" / "state.pt", directory / "epoch_11" / "state.pt")
    assert names(directory / "best") == ["state.pt"]


@pytest.mark.parametrize("background", [False, True], ids=["foreground", "background"])
def test_every_n_epochs_and_always_the_last(tmp_path, background):
    directory, seen = run(tmp_path, 7, save_every_n_epochs=3, keep_last_k=5, keep_best=False, background=background)
    assert names(directory) == ["epoch_2", "epoch_5", "epoch_6"]
    assert seen.checkpoints == [None, None, str(directory / "epoch_2"), None, None,
                                str(directory / "epoch_5"), str(directory / "epoch_6")]
    assert [load_state(directory / f"epoch_{e}")["epoch"] for e in (2, 5, 6)] == [2, 5, 6]


def test_the_epoch_after_which_early_stopping_ends_training_is_saved(tmp_path):
    stopper = EarlyStoppingCallback(patience=2, min_delta=10.0)  # nothing after epoch 0 improves
    directory, seen = run(tmp_path, 20, save_every_n_epochs=5, keep_best=False, extra=[stopper])
    assert len(seen.checkpoints) == 3  # stopped after epoch 2
    assert names(directory) == ["epoch_2"] and seen.checkpoints[-1] == str(directory / "epoch_2")


def test_no_checkpoint_of_a_non_finite_epoch(tmp_path):
    values = [0.5, 0.4, math.nan, 0.3]
    directory, seen = run(tmp_path, 4, values=values, save_every_n_epochs=5, extra=[NaNDetectionCallback()])
    assert seen.checkpoints == [None, None, None]  # stopped after the NaN epoch; nothing periodic due
    assert names(directory) == ["best"] and load_state(directory / "best")["epoch"] == 1


@pytest.mark.parametrize("background", [False, True], ids=["foreground", "background"])
@pytest.mark.parametrize("monitor, mode, best_epoch", [
    ("val_loss", "min", 2), ("val_loss", "max", 4), ("val_score", "max", 2), ("val_score", "min", 4),
])
def test_best_by_monitor_and_mode(tmp_path, monitor, mode, best_epoch, background):
    values = [0.9, 0.5, 0.2, 0.6, 1.2, 0.3]
    directory, seen = run(tmp_path, 6, values=values, monitor=monitor, mode=mode, keep_last_k=1, background=background)
    assert names(directory) == ["best", "epoch_5"]
    state = load_state(directory / "best")
    assert state["epoch"] == best_epoch
    assert_same_weights(state["model"], seen.weights[best_epoch])
    expected = values[best_epoch] if monitor == "val_loss" else -values[best_epoch]
    assert state["callbacks"]["CheckpointCallback"]["best_value"] == pytest.approx(expected)


def test_best_by_train_loss(tmp_path):
    directory, seen = run(tmp_path, 8, monitor="train_loss", mode="min", keep_last_k=1)
    # plain gradient descent on a fixed set: the training loss falls every epoch, the last is best
    assert load_state(directory / "best")["epoch"] == 7


@pytest.mark.parametrize("background", [False, True], ids=["foreground", "background"])
def test_best_survives_the_deletion_of_its_periodic_twin(tmp_path, background):
    values = [0.1, 0.5, 0.6, 0.7, 0.8]  # epoch 0 stays best while epoch_0 is rotated out
    directory, seen = run(tmp_path, 5, values=values, keep_last_k=2, background=background)
    assert names(directory) == ["best", "epoch_3", "epoch_4"]
    state = load_state(directory / "best")
    assert state["epoch"] == 0
    assert_same_weights(state["model"], seen.weights[0])


@pytest.mark.parametrize("background", [False, True], ids=["foreground", "background"])
def test_a_new_best_replaces_the_old_one_even_when_not_due(tmp_path, background):
    values = [0.9, 0.8, 0.1, 0.5]
    directory, seen = run(tmp_path, 4, values=values, save_every_n_epochs=10, background=background)
    assert names(directory) == ["best", "epoch_3"]
    assert load_state(directory / "best")["epoch"] == 2
    assert seen.checkpoints == [None, None, None, str(directory / "epoch_3")]


def test_an_unknown_monitor_is_an_error_naming_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match=r"'val_acc'.*valid: val_loss, train_loss, val_score") as info:
        run(tmp_path, 2, values=[0.5, 0.4], monitor="val_acc")
    assert any("CheckpointCallback" in note for note in info.value.__notes__)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="save_every_n_epochs"):
        CheckpointCallback(tmp_path, save_every_n_epochs=0)
    with pytest.raises(ValueError, match="keep_last_k"):
        CheckpointCallback(tmp_path, keep_last_k=0)
    with pytest.raises(ValueError, match="mode"):
        CheckpointCallback(tmp_path, mode="lowest")


class Unpicklable(TrainingCallback):
    """A user callback whose state cannot be serialized from epoch `at` on."""

    priority = 50  # before the checkpoint (95): the epoch's state is already unpicklable

    def __init__(self, at):
        self.at, self.epoch = at, 0

    def on_epoch_end(self, trainer, *, epoch, **kwargs):
        self.epoch = epoch

    def state_dict(self):
        return {"epoch": self.epoch, "hook": (lambda: None) if self.epoch >= self.at else None}

    def load_state_dict(self, state):
        self.epoch = state["epoch"]


def test_a_failed_save_leaves_the_earlier_checkpoints_intact(tmp_path):
    values = [0.9, 0.8, 0.1, 0.05]  # epoch 2 would be a new best and periodic
    with pytest.raises(Exception, match="pickle") as info:
        run(tmp_path, 4, values=values, keep_last_k=5, extra=[Unpicklable(at=2)])
    assert any("CheckpointCallback" in note for note in info.value.__notes__)
    directory = tmp_path / "ck"
    assert names(directory) == ["best", "epoch_0", "epoch_1"]  # no epoch_2, no temporary files
    assert names(directory / "best") == ["state.pt"]
    assert load_state(directory / "best")["epoch"] == 1
    assert [load_state(directory / f"epoch_{e}")["epoch"] for e in (0, 1)] == [0, 1]


# --- in the background --------------------------------------------------------------------------

class Reporter(TrainingCallback):
    """Where a trial's Pruner reports (100): the directory reported, and whether its state is there yet."""

    priority = 100

    def __init__(self, stop_at=None):
        self.reported, self.stop_at = [], stop_at

    def on_epoch_end(self, trainer, *, epoch, **kwargs):
        self.reported.append(trainer._epoch_checkpoint)
        if epoch == self.stop_at:
            raise SystemExit  # a scheduler's STOP in reply to this epoch's report


@pytest.mark.parametrize("stop_at", [None, 2])
def test_published_checkpoints_are_written_into_tunes_directories_and_the_last_before_training_ends(tmp_path, stop_at):
    destinations = iter(tmp_path / "trial" / f"checkpoint_{i:06d}" for i in range(100))
    reporter = Reporter(stop_at)
    callback = CheckpointCallback(tmp_path / "ck", keep_best=False, keep_last_k=1)
    callback.publish_to(lambda: next(destinations))
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), None, nn.CrossEntropyLoss(),
                      [callback, reporter])
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    with pytest.raises(SystemExit) if stop_at else contextlib.nullcontext():
        trainer.train(TensorBatches(x, y, 8, shuffle=True), TensorBatches(x, y, 32), 5)
    epochs = 5 if stop_at is None else stop_at + 1
    assert reporter.reported == [str(tmp_path / "ck" / "reported")] * epochs
    assert names(tmp_path / "ck" / "reported") == []  # reported empty: Tune's copy is instant
    written = sorted((tmp_path / "trial").iterdir())
    assert [p.name for p in written] == [f"checkpoint_{i:06d}" for i in range(epochs)]
    assert all(names(p) == ["state.pt"] for p in written)  # the last one too, as training returned
    assert [load_state(p)["epoch"] for p in written] == list(range(epochs))
    assert_same_weights(load_state(written[-1])["model"], model.state_dict())


def test_a_background_write_that_fails_raises_in_the_training_thread(tmp_path):
    callback = CheckpointCallback(tmp_path / "ck", keep_best=False)
    callback.publish_to(lambda: tmp_path / "a-file" / "checkpoint")  # not a directory: the write fails
    (tmp_path / "a-file").write_text("")
    model = nn.Linear(4, 2)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), None, nn.CrossEntropyLoss(), [callback])
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    with pytest.raises(OSError) as info:
        trainer.train(TensorBatches(x, y, 8), TensorBatches(x, y, 32), 3)
    assert "raised by the background write of the checkpoint of epoch 0" in info.value.__notes__


def test_a_foreground_checkpoint_is_on_disk_when_the_epoch_is_reported(tmp_path):
    """A staging directory that Tune copies during the report (an object store, PBT): written at once."""
    class Check(Reporter):
        def on_epoch_end(self, trainer, **kwargs):
            self.reported.append(names(Path(trainer._epoch_checkpoint)))

    check = Check()
    callback = CheckpointCallback(tmp_path / "ck", keep_best=False, keep_last_k=1, durable=False, background=False)
    model = nn.Linear(4, 2)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), None, nn.CrossEntropyLoss(),
                      [callback, check])
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    trainer.train(TensorBatches(x, y, 8), TensorBatches(x, y, 32), 3)
    assert check.reported == [["state.pt"]] * 3
