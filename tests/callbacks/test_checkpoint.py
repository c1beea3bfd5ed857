"""CheckpointCallback standalone: periodic saves, keep_last_k by epoch number, best by monitor."""

from __future__ import annotations

import pytest
import torch

from tuneloop.callbacks import CheckpointCallback, TrainingCallback
from tuneloop.checkpointing import load_state
from tuneloop.data import TensorBatches
from tuneloop.metrics import accuracy
from tuneloop.trainer import Trainer


class Script(TrainingCallback):
    """Replaces the val_loss/val_accuracy seen by later callbacks with scripted values."""

    priority = 1

    def __init__(self, values):
        self.values = values


def run(tmp_path, epochs, values=None, **kwargs):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    callback = CheckpointCallback(tmp_path / "ck", **kwargs)
    seen = []

    class Record(TrainingCallback):
        priority = 99

        def on_epoch_end(self, trainer, *, epoch, **kw):
            seen.append(trainer._epoch_checkpoint)

    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), None, torch.nn.CrossEntropyLoss(),
                      [callback, Record()], metrics={"accuracy": accuracy})
    if values is not None:  # scripted monitor values by epoch
        original = trainer.val_epoch

        def val_epoch(loader, epoch):
            loss, metrics = original(loader, epoch)
            return values[epoch], {"val_accuracy": -values[epoch]}

        trainer.val_epoch = val_epoch
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    trainer.train(TensorBatches(x, y, 8), TensorBatches(x, y, 32), epochs)
    return tmp_path / "ck", seen


def names(directory):
    return sorted(p.name for p in directory.iterdir())


def test_keep_last_k_by_epoch_number_past_ten(tmp_path):
    directory, seen = run(tmp_path, 12, keep_last_k=3)
    assert names(directory) == ["best", "epoch_10", "epoch_11", "epoch_9"]  # epoch_9 < epoch_10 by number
    assert seen[-1] == str(directory / "epoch_11")
    assert load_state(directory / "epoch_10")["epoch"] == 10


def test_every_n_epochs_and_always_the_last(tmp_path):
    directory, seen = run(tmp_path, 7, save_every_n_epochs=3, keep_last_k=5)
    assert [p for p in names(directory) if p.startswith("epoch")] == ["epoch_2", "epoch_5", "epoch_6"]
    assert [s is not None for s in seen] == [False, False, True, False, False, True, True]


@pytest.mark.parametrize("monitor, mode, best_epoch", [
    ("val_loss", "min", 2), ("val_loss", "max", 4), ("val_accuracy", "max", 2), ("val_accuracy", "min", 4),
])
def test_best_by_monitor(tmp_path, monitor, mode, best_epoch):
    values = [0.9, 0.5, 0.2, 0.6, 1.2, 0.3]
    directory, _ = run(tmp_path, 6, values=values, monitor=monitor, mode=mode, keep_last_k=1)
    state = load_state(directory / "best")
    assert state["epoch"] == best_epoch
    assert state["callbacks"]["CheckpointCallback"]["best_value"] == pytest.approx(
        values[best_epoch] if monitor == "val_loss" else -values[best_epoch])


def test_best_survives_the_deletion_of_its_periodic_twin(tmp_path):
    values = [0.1, 0.5, 0.6, 0.7, 0.8]  # epoch 0 stays best while epoch_0 is rotated out
    directory, _ = run(tmp_path, 5, values=values, keep_last_k=2)
    assert names(directory) == ["best", "epoch_3", "epoch_4"]
    assert load_state(directory / "best")["epoch"] == 0


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        CheckpointCallback(tmp_path, save_every_n_epochs=0)
    with pytest.raises(ValueError):
        CheckpointCallback(tmp_path, keep_last_k=0)
