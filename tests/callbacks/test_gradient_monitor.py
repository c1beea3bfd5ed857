import math

import pytest
import torch

from tuneloop.callbacks import GradientMonitorCallback
from tuneloop.data import TensorBatches
from tuneloop.trainer import Trainer


class Recorder(GradientMonitorCallback):
    """Also computes each batch's norm independently, the plain way."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.independent = []

    def on_train_step_end(self, trainer, **kwargs):
        super().on_train_step_end(trainer, **kwargs)
        squares = sum(float((p.grad.double() ** 2).sum()) for p in trainer.model.parameters() if p.grad is not None)
        self.independent.append(math.sqrt(squares))


def trainer_with(callback, scale=1.0, criterion=None):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    x, y = torch.randn(64, 5) * scale, torch.randint(0, 3, (64,))
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), None,
                      criterion or torch.nn.CrossEntropyLoss(), [callback])
    return trainer, TensorBatches(x, y, 8, shuffle=True), TensorBatches(x, y, 64)


def test_epoch_max_equals_the_true_per_batch_maximum_and_resets_each_epoch():
    monitor = Recorder()
    trainer, train, val = trainer_with(monitor)
    trainer.train(train, val, epochs=1)
    assert trainer._max_grad_norm == pytest.approx(max(monitor.independent), rel=1e-5)
    monitor.independent.clear()
    trainer.train(train, val, epochs=2, start_epoch=1)
    assert trainer._max_grad_norm == pytest.approx(max(monitor.independent), rel=1e-5)


def test_warning_once_per_epoch_with_count(capsys):
    monitor = GradientMonitorCallback(warn_threshold=1e-6)
    trainer, train, val = trainer_with(monitor)
    trainer.train(train, val, epochs=2)
    lines = [l for l in capsys.readouterr().out.splitlines() if "gradient norm" in l]
    assert len(lines) == 2 and "8 batch(es)" in lines[0] and "above 1e-06" in lines[0]


def test_no_warning_below_threshold(capsys):
    trainer, train, val = trainer_with(GradientMonitorCallback())
    trainer.train(train, val, epochs=1)
    assert "gradient norm" not in capsys.readouterr().out


def test_nan_gradient_is_reported_not_hidden(capsys):
    def nan_loss(out, y):
        return torch.nn.functional.cross_entropy(out, y) * torch.tensor(float("nan"))

    trainer, train, val = trainer_with(GradientMonitorCallback(), criterion=nan_loss)
    trainer.train(train, val, epochs=1)
    assert math.isnan(trainer._max_grad_norm)
    assert "non-finite" in capsys.readouterr().out


def test_model_without_gradients_leaves_none():
    monitor = GradientMonitorCallback()
    trainer, _, _ = trainer_with(monitor)
    monitor.on_train_epoch_begin(trainer, epoch=0)
    monitor.on_epoch_end(trainer, epoch=0)
    assert trainer._max_grad_norm is None
