import math

import pytest
import torch

from tuneloop.callbacks import NaNDetectionCallback, TrainingCallback
from tuneloop.training.data import TensorBatches
from tuneloop.trainer import Trainer


@pytest.mark.parametrize("train, val, detected", [
    (1.0, 2.0, False), (math.nan, 1.0, True), (1.0, math.nan, True), (math.inf, 1.0, True),
    (1.0, -math.inf, True), (0.0, -3.5, False), (1e308, 1e-308, False), (math.nan, math.nan, True),
])
def test_non_finite_losses_are_detected(train, val, detected):
    callback = NaNDetectionCallback()
    callback.on_epoch_end(None, epoch=3, train_loss=train, val_loss=val, metrics={})
    assert callback.nan_detected is detected
    assert callback.stop_reason() == ("non_finite_loss" if detected else None)


def test_detection_stays_until_the_next_training():
    callback = NaNDetectionCallback()
    callback.on_epoch_end(None, epoch=0, train_loss=math.nan, val_loss=1.0, metrics={})
    callback.on_epoch_end(None, epoch=1, train_loss=1.0, val_loss=1.0, metrics={})
    assert callback.nan_detected  # a later finite epoch does not clear it
    callback.on_train_begin(None, epochs=2, start_epoch=0)
    assert not callback.nan_detected and callback.stop_reason() is None


def test_prints_one_line_naming_the_epoch(capsys):
    NaNDetectionCallback().on_epoch_end(None, epoch=7, train_loss=1.0, val_loss=math.inf, metrics={})
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "epoch 7" in out and "inf" in out
    NaNDetectionCallback().on_epoch_end(None, epoch=8, train_loss=1.0, val_loss=2.0, metrics={})
    assert capsys.readouterr().out == ""


class Epochs(TrainingCallback):
    priority = 50

    def __init__(self):
        self.ends = []

    def on_epoch_end(self, trainer, *, epoch, train_loss, val_loss, **kwargs):
        self.ends.append((epoch, train_loss, val_loss))


def poisoned(where, value, from_epoch):
    """CrossEntropy plus a gradient-free constant `value` in training steps / validation from
    `from_epoch` on (the weights stay finite, so only the reported loss is poisoned)."""
    state = {"epoch": 0}

    class Clock(TrainingCallback):
        priority = 0

        def on_train_epoch_begin(self, trainer, *, epoch, **kwargs):
            state["epoch"] = epoch

    def criterion(outputs, targets):
        loss = torch.nn.functional.cross_entropy(outputs, targets)
        training = torch.is_grad_enabled()
        if state["epoch"] >= from_epoch and ((where == "train") == training):
            loss = loss + torch.tensor(value)
        return loss

    return criterion, Clock()


@pytest.mark.parametrize("where", ["train", "val"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_trainer_stops_after_the_poisoned_epoch_and_returns_inf(where, value):
    criterion, clock = poisoned(where, value, from_epoch=2)
    nan = NaNDetectionCallback()
    epochs = Epochs()
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), None, criterion, [clock, nan, epochs])
    x, y = torch.randn(48, 4), torch.randint(0, 3, (48,))
    result = trainer.train(TensorBatches(x, y, 16), TensorBatches(x, y, 48), epochs=6)
    assert result == math.inf and nan.nan_detected and trainer.stop_reason == "non_finite_loss"
    assert [e[0] for e in epochs.ends] == [0, 1, 2]  # the poisoned epoch completes, then it stops
    assert all(math.isfinite(t) and math.isfinite(v) for _, t, v in epochs.ends[:2])


def test_finite_losses_run_every_epoch():
    nan, epochs = NaNDetectionCallback(), Epochs()
    model = torch.nn.Linear(4, 3)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), None, torch.nn.CrossEntropyLoss(),
                      [nan, epochs])
    x, y = torch.randn(48, 4), torch.randint(0, 3, (48,))
    result = trainer.train(TensorBatches(x, y, 16), TensorBatches(x, y, 48), epochs=4)
    assert not nan.nan_detected and trainer.stop_reason is None and len(epochs.ends) == 4
    assert result == epochs.ends[-1][2] and math.isfinite(result)


def test_a_second_training_starts_clean():
    criterion, clock = poisoned("train", math.nan, from_epoch=0)
    nan = NaNDetectionCallback()
    model = torch.nn.Linear(4, 3)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), None, criterion, [clock, nan])
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    assert trainer.train([(x, y)], [(x, y)], epochs=3) == math.inf
    trainer.criterion = torch.nn.CrossEntropyLoss()
    assert math.isfinite(trainer.train([(x, y)], [(x, y)], epochs=3)) and not nan.nan_detected
