"""Trainer: the epoch range, return values, on_train_end on every exit path, LR stepping, no per-step sync."""

from __future__ import annotations

import math

import pytest
import torch

from tuneloop.callbacks import (CallbackRunner, EarlyStoppingCallback, NaNDetectionCallback, TrainingCallback)
from tuneloop.data import TensorBatches, make_loader
from tuneloop.metrics import accuracy
from tuneloop.trainer import Trainer


def data(n=96, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=generator)
    y = (x[:, 0] > 0).long()
    return x, y


def make_trainer(callbacks=(), scheduler=False, model=None, lr=0.05, **kwargs):
    torch.manual_seed(0)
    model = model or torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5) if scheduler else None
    return Trainer(model, optimizer, sched, torch.nn.CrossEntropyLoss(), callbacks, **kwargs)


def loaders():
    x, y = data()
    return TensorBatches(x, y, 16, shuffle=True), TensorBatches(x, y, 32)


class Log(TrainingCallback):
    priority = 50

    def __init__(self):
        self.events = []

    def on_train_begin(self, trainer, *, epochs, start_epoch, **kwargs):
        self.events.append(("begin", epochs, start_epoch))

    def on_train_epoch_begin(self, trainer, *, epoch, **kwargs):
        self.events.append(("epoch_begin", epoch, trainer.lr))

    def on_train_step_end(self, trainer, *, batch_idx, loss, **kwargs):
        assert isinstance(loss, torch.Tensor) and loss.dim() == 0 and not loss.requires_grad
        self.events.append(("step", batch_idx))

    def on_val_begin(self, trainer, *, epoch, **kwargs):
        self.events.append(("val_begin", epoch))

    def on_val_end(self, trainer, *, epoch, val_loss, metrics, **kwargs):
        self.events.append(("val_end", epoch, val_loss, dict(metrics)))

    def on_epoch_end(self, trainer, *, epoch, train_loss, val_loss, metrics, **kwargs):
        self.events.append(("epoch_end", epoch, trainer.lr))

    def on_train_end(self, trainer, **kwargs):
        self.events.append(("end",))

    def of(self, kind):
        return [e for e in self.events if e[0] == kind]


def test_event_flow_epoch_range_and_return_value():
    log = Log()
    trainer = make_trainer([log], metrics={"accuracy": accuracy})
    train, val = loaders()
    result = trainer.train(train, val, epochs=5, start_epoch=2)
    assert log.events[0] == ("begin", 5, 2) and log.events[-1] == ("end",)
    assert [e[1] for e in log.of("epoch_end")] == [2, 3, 4]
    assert len(log.of("step")) == 3 * len(train)
    order = [e[0] for e in log.events if e[0] != "step"]
    assert order[:5] == ["begin", "epoch_begin", "val_begin", "val_end", "epoch_end"]
    last_val = log.of("val_end")[-1]
    assert result == last_val[2]
    assert set(last_val[3]) == {"val_accuracy"} and 0 <= last_val[3]["val_accuracy"] <= 1
    assert trainer.epochs == 5 and trainer.stop_reason is None


def test_accepts_a_runner_and_plain_list_loaders():
    x, y = data()
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, len(x), 32)]
    log = Log()
    trainer = make_trainer(CallbackRunner([log]))
    assert math.isfinite(trainer.train(batches, batches, epochs=2))
    assert len(log.of("step")) == 2 * len(batches)


def test_val_loss_is_the_sample_weighted_mean():
    x, y = data(n=50)
    trainer = make_trainer()
    value, _ = trainer.val_epoch(TensorBatches(x, y, 16), epoch=0)  # batches of 16, 16, 16, 2
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(trainer.model(x), y).item()
    assert value == pytest.approx(expected, rel=1e-5)


def test_scheduler_steps_after_the_epoch_so_every_hook_sees_that_epochs_lr():
    log = Log()
    trainer = make_trainer([log], scheduler=True, lr=0.8)
    train, val = loaders()
    trainer.train(train, val, epochs=3)
    assert [e[2] for e in log.of("epoch_begin")] == [0.8, 0.4, 0.2]
    assert [e[2] for e in log.of("epoch_end")] == [0.8, 0.4, 0.2]


class Raise(TrainingCallback):
    priority = 50

    def __init__(self, exc, at_epoch=1):
        self.exc, self.at_epoch = exc, at_epoch

    def on_epoch_end(self, trainer, *, epoch, **kwargs):
        if epoch == self.at_epoch:
            raise self.exc


class ExplodingNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(6, 2)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls > 3:
            raise RuntimeError("forward exploded")
        return self.lin(x)


@pytest.mark.parametrize("path", ["normal", "early_stop", "nan_stop", "exception", "system_exit"])
def test_on_train_end_fires_exactly_once_on_every_exit_path(path):
    log = Log()
    callbacks = [log]
    model = None
    if path == "early_stop":
        callbacks.append(EarlyStoppingCallback(patience=1, min_delta=10.0))  # nothing counts as better
    elif path == "nan_stop":
        callbacks.append(NaNDetectionCallback())
    elif path == "system_exit":
        callbacks.append(Raise(SystemExit(0)))
    elif path == "exception":
        model = ExplodingNet()
    trainer = make_trainer(callbacks, model=model)
    if path == "nan_stop":
        trainer.criterion = lambda out, y: torch.nn.functional.cross_entropy(out, y) * float("nan")
    train, val = loaders()
    if path == "exception":
        with pytest.raises(RuntimeError, match="forward exploded"):
            trainer.train(train, val, epochs=4)
    elif path == "system_exit":
        with pytest.raises(SystemExit):
            trainer.train(train, val, epochs=4)
    else:
        result = trainer.train(train, val, epochs=4)
        if path == "nan_stop":
            assert result == math.inf and trainer.stop_reason == "non_finite_loss"
            assert len(log.of("epoch_end")) == 1
        elif path == "early_stop":
            assert trainer.stop_reason == "early_stopping" and len(log.of("epoch_end")) == 2
            assert math.isfinite(result)
        else:
            assert len(log.of("epoch_end")) == 4
    assert log.of("end") == [("end",)]


def test_nan_wins_over_early_stopping_in_the_same_epoch():
    trainer = make_trainer([EarlyStoppingCallback(patience=1), NaNDetectionCallback()])
    trainer.criterion = lambda out, y: torch.nn.functional.cross_entropy(out, y) * float("nan")
    train, val = loaders()
    assert trainer.train(train, val, epochs=3) == math.inf
    assert trainer.stop_reason == "non_finite_loss"


def test_no_host_sync_per_step(monkeypatch):
    """Reading a tensor's value (`item`, `float`, `tolist`) happens a fixed number of times per
    epoch, whatever the number of batches."""
    from tuneloop.callbacks import GradientMonitorCallback

    counts = {"n": 0}
    for name in ("item", "tolist", "__float__", "__bool__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, **kwargs):
            counts["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)

    def syncs(n_samples):
        x, y = data(n=n_samples)
        trainer = make_trainer([GradientMonitorCallback()])
        counts["n"] = 0
        trainer.train_epoch(TensorBatches(x, y, 8), epoch=0)
        trainer.callbacks.fire("on_epoch_end", trainer=trainer, epoch=0, train_loss=0.0, val_loss=0.0, metrics={})
        return counts["n"]

    assert syncs(32) == syncs(256)  # 4 vs 32 batches
    assert syncs(32) <= 3


def test_batches_are_moved_to_the_trainer_device():
    x, y = data()
    seen = []

    class Check(TrainingCallback):
        def on_train_step_end(self, trainer, *, loss, **kwargs):
            seen.append(loss.device)

    trainer = make_trainer([Check()], device="cpu")
    trainer.train(make_loader(torch.utils.data.TensorDataset(x, y), 32, True, 0, "cpu"), [(x, y)], 1)
    assert seen and all(d.type == "cpu" for d in seen)
