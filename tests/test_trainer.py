"""Trainer: the epoch range, return values, on_train_end on every exit path, LR stepping, no per-step sync."""

from __future__ import annotations

import math

import pytest
import torch

from tuneloop.callbacks import (CallbackRunner, EarlyStoppingCallback, GradientMonitorCallback,
                                LossPredictionCallback, NaNDetectionCallback, OptimizerModeCallback,
                                OverfitDetectionCallback, TrainingCallback)
from tuneloop.training.data import TensorBatches, make_loader
from tuneloop.metrics import accuracy
from tuneloop.trainer import Trainer
from tl_testing import count_reads


def data(n=96, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=generator)
    y = (x[:, 0] > 0).long()
    return x, y


def make_model():
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(8, 2))


def make_trainer(callbacks=(), scheduler=False, model=None, lr=0.05, **kwargs):
    torch.manual_seed(0)
    model = model or make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5) if scheduler else None
    return Trainer(model, optimizer, sched, torch.nn.CrossEntropyLoss(), callbacks, **kwargs)


def loaders():
    x, y = data()
    return TensorBatches(x, y, 16, shuffle=True), TensorBatches(x, y, 32)


def nan_when(training: bool | None, value=math.nan):
    """CrossEntropy plus a constant `value` in training steps, validation, or both (None): the
    constant has no gradient, so the weights stay finite."""
    def criterion(outputs, targets):
        loss = torch.nn.functional.cross_entropy(outputs, targets)
        if training is None or torch.is_grad_enabled() == training:
            loss = loss + torch.tensor(value)
        return loss
    return criterion


class Log(TrainingCallback):
    priority = 50

    def __init__(self):
        self.events = []

    def on_train_begin(self, trainer, *, epochs, start_epoch, **kwargs):
        self.events.append(("begin", epochs, start_epoch))

    def on_train_epoch_begin(self, trainer, *, epoch, **kwargs):
        self.events.append(("epoch_begin", epoch, trainer.lr))

    def on_train_step_end(self, trainer, *, batch_idx, loss, **kwargs):
        self.events.append(("step", batch_idx, loss, trainer.lr, trainer.model.training))

    def on_val_begin(self, trainer, *, epoch, **kwargs):
        self.events.append(("val_begin", epoch, trainer.lr, trainer.model.training))

    def on_val_end(self, trainer, *, epoch, val_loss, metrics, **kwargs):
        self.events.append(("val_end", epoch, val_loss, dict(metrics), trainer.lr, trainer.model.training))

    def on_epoch_end(self, trainer, *, epoch, train_loss, val_loss, metrics, **kwargs):
        self.events.append(("epoch_end", epoch, trainer.lr, train_loss, val_loss, dict(metrics)))

    def on_train_end(self, trainer, **kwargs):
        self.events.append(("end",))

    def of(self, kind):
        return [e for e in self.events if e[0] == kind]


def test_event_flow_absolute_epochs_and_return_value():
    log = Log()
    trainer = make_trainer([log], metrics={"accuracy": accuracy})
    train, val = loaders()
    result = trainer.train(train, val, epochs=5, start_epoch=2)
    assert log.events[0] == ("begin", 5, 2) and log.events[-1] == ("end",)
    for kind in ("epoch_begin", "val_begin", "val_end", "epoch_end"):
        assert [e[1] for e in log.of(kind)] == [2, 3, 4], kind
    assert len(log.of("step")) == 3 * len(train)
    assert [e[1] for e in log.of("step")] == list(range(len(train))) * 3
    kinds = [e[0] for e in log.events if e[0] != "step"]
    assert kinds == ["begin"] + ["epoch_begin", "val_begin", "val_end", "epoch_end"] * 3 + ["end"]
    last_val = log.of("val_end")[-1]
    assert result == last_val[2] == log.of("epoch_end")[-1][4]
    assert set(last_val[3]) == {"val_accuracy"} and 0 <= last_val[3]["val_accuracy"] <= 1
    assert log.of("epoch_end")[-1][5] == last_val[3]  # on_epoch_end gets the same metrics
    assert trainer.epochs == 5 and trainer.stop_reason is None


def test_step_loss_is_a_detached_0_dim_tensor_of_that_batch():
    log = Log()
    model = torch.nn.Linear(6, 2)  # no dropout, and lr 0: each batch's loss can be recomputed
    trainer = make_trainer([log], model=model, lr=0.0)
    x, y = data(n=40)
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 40, 16)]  # 16, 16, 8
    trainer.train(batches, batches, epochs=1)
    steps = log.of("step")
    assert [e[1] for e in steps] == [0, 1, 2]
    for (_, _, loss, _, training), (bx, by) in zip(steps, batches):
        assert isinstance(loss, torch.Tensor) and loss.dim() == 0
        assert not loss.requires_grad and loss.grad_fn is None and training
        with torch.no_grad():
            assert float(loss) == pytest.approx(torch.nn.functional.cross_entropy(model(bx), by).item(), rel=1e-6)


def test_train_loss_is_the_sample_weighted_mean_of_the_step_losses():
    log = Log()
    trainer = make_trainer([log])
    x, y = data(n=40)
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 40, 16)]  # 16, 16, 8
    trainer.train(batches, batches, epochs=1)
    steps = [float(e[2]) for e in log.of("step")]
    expected = (16 * steps[0] + 16 * steps[1] + 8 * steps[2]) / 40
    assert log.of("epoch_end")[0][3] == pytest.approx(expected, rel=1e-6)
    assert expected != pytest.approx(sum(steps) / 3, rel=1e-6)  # the weighting matters here


def test_model_modes_training_steps_and_validation():
    log = Log()
    trainer = make_trainer([log])
    trainer.train(*loaders(), epochs=2)
    assert all(e[4] for e in log.of("step"))  # model.train() during the steps
    assert not any(e[3] for e in log.of("val_begin")) and not any(e[5] for e in log.of("val_end"))


def test_validation_metrics_match_an_independent_computation():
    seen = {}

    class Capture(TrainingCallback):
        def on_val_end(self, trainer, *, val_loss, metrics, **kwargs):
            with torch.no_grad():  # the weights validation just used
                out = trainer.model(x)
            seen.update(val_loss=val_loss, metrics=metrics,
                        loss=torch.nn.functional.cross_entropy(out, y).item(),
                        acc=(out.argmax(1) == y).float().mean().item())

    x, y = data(n=50)
    trainer = make_trainer([Capture()], metrics={"accuracy": accuracy})
    trainer.train(TensorBatches(x, y, 8), TensorBatches(x, y, 16), epochs=2)  # val batches 16, 16, 16, 2
    assert seen["val_loss"] == pytest.approx(seen["loss"], rel=1e-5)
    assert seen["metrics"] == {"val_accuracy": pytest.approx(seen["acc"], abs=1e-6)}
    assert isinstance(seen["val_loss"], float) and isinstance(seen["metrics"]["val_accuracy"], float)


def test_no_metrics_gives_an_empty_dict():
    log = Log()
    make_trainer([log]).train(*loaders(), epochs=1)
    assert log.of("val_end")[0][3] == {}


def test_accepts_a_runner_and_plain_list_loaders():
    x, y = data()
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, len(x), 32)]
    log = Log()
    runner = CallbackRunner([log])
    trainer = make_trainer(runner)
    assert trainer.callbacks is runner
    assert math.isfinite(trainer.train(batches, batches, epochs=2))
    assert len(log.of("step")) == 2 * len(batches)
    as_lists = [[bx, by] for bx, by in batches]  # any re-iterable collection of pairs
    assert math.isfinite(make_trainer([]).train(tuple(as_lists), as_lists, epochs=1))


def test_accepts_a_plain_list_of_callbacks_sorted_by_priority():
    order = []

    class P(TrainingCallback):
        def __init__(self, priority):
            self.priority = priority

        def on_train_begin(self, trainer, **kwargs):
            order.append(self.priority)

    trainer = make_trainer([P(30), P(10), P(20)])
    assert isinstance(trainer.callbacks, CallbackRunner)
    trainer.train(*loaders(), epochs=1)
    assert order == [10, 20, 30]


def test_val_loss_is_the_sample_weighted_mean():
    x, y = data(n=50)
    trainer = make_trainer()
    value, metrics = trainer.val_epoch(TensorBatches(x, y, 16), epoch=0)  # batches of 16, 16, 16, 2
    trainer.model.eval()
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(trainer.model(x), y).item()
    assert value == pytest.approx(expected, rel=1e-5) and metrics == {}


def test_scheduler_steps_after_the_epoch_so_every_hook_sees_that_epochs_lr():
    log = Log()
    trainer = make_trainer([log], scheduler=True, lr=0.8)
    trainer.train(*loaders(), epochs=3)
    assert [e[2] for e in log.of("epoch_begin")] == [0.8, 0.4, 0.2]
    assert [e[2] for e in log.of("val_begin")] == [0.8, 0.4, 0.2]
    assert [e[4] for e in log.of("val_end")] == [0.8, 0.4, 0.2]
    assert [e[2] for e in log.of("epoch_end")] == [0.8, 0.4, 0.2]
    steps = log.of("step")
    per_epoch = len(steps) // 3
    assert [e[3] for e in steps] == [0.8] * per_epoch + [0.4] * per_epoch + [0.2] * per_epoch
    assert trainer.scheduler.last_epoch == 3 and trainer.lr == pytest.approx(0.1)  # once per epoch


def test_scheduler_does_not_step_after_a_stopping_epoch():
    trainer = make_trainer([EarlyStoppingCallback(patience=1, min_delta=10.0)], scheduler=True, lr=0.8)
    trainer.train(*loaders(), epochs=10)
    assert trainer.stop_reason == "early_stopping"
    assert trainer.scheduler.last_epoch == 1 and trainer.lr == pytest.approx(0.4)  # stepped after epoch 0 only


def test_reduce_lr_on_plateau_gets_the_val_loss():
    log = Log()
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.8)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=0, factor=0.5)

    def constant(outputs, targets):  # the same loss every epoch: a plateau
        return (outputs * 0).sum() + 1.0

    trainer = Trainer(model, optimizer, plateau, constant, [log])
    trainer.train(*loaders(), epochs=4)
    assert [e[2] for e in log.of("epoch_begin")] == [0.8, 0.8, 0.4, 0.2]


class Raise(TrainingCallback):
    priority = 50

    def __init__(self, exc, at_epoch=1, hook="on_epoch_end"):
        self.exc, self.at_epoch, self.hook = exc, at_epoch, hook

    def on_epoch_end(self, trainer, *, epoch, **kwargs):
        if self.hook == "on_epoch_end" and epoch == self.at_epoch:
            raise self.exc

    def on_train_step_end(self, trainer, *, batch_idx, **kwargs):
        if self.hook == "on_train_step_end" and batch_idx == 2:
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


@pytest.mark.parametrize("path", ["normal", "early_stop", "nan_stop", "inf_stop", "exception", "callback_error",
                                  "system_exit", "keyboard_interrupt"])
def test_on_train_end_fires_exactly_once_on_every_exit_path(path):
    log = Log()
    callbacks = [log]
    model = None
    if path == "early_stop":
        callbacks.append(EarlyStoppingCallback(patience=1, min_delta=10.0))  # nothing counts as better
    elif path in ("nan_stop", "inf_stop"):
        callbacks.append(NaNDetectionCallback())
    elif path == "system_exit":
        callbacks.append(Raise(SystemExit(0)))
    elif path == "keyboard_interrupt":
        callbacks.append(Raise(KeyboardInterrupt(), hook="on_train_step_end"))
    elif path == "callback_error":
        callbacks.append(Raise(KeyError("boom"), at_epoch=2))
    elif path == "exception":
        model = ExplodingNet()
    trainer = make_trainer(callbacks, model=model)
    if path == "nan_stop":
        trainer.criterion = nan_when(None)
    elif path == "inf_stop":
        trainer.criterion = nan_when(False, math.inf)
    train, val = loaders()
    if path == "exception":
        with pytest.raises(RuntimeError, match="forward exploded"):
            trainer.train(train, val, epochs=4)
        assert log.of("epoch_end") == []
    elif path == "callback_error":
        with pytest.raises(KeyError) as info:
            trainer.train(train, val, epochs=4)
        assert any("Raise" in note for note in info.value.__notes__)
        assert len(log.of("epoch_end")) == 3
    elif path == "system_exit":
        with pytest.raises(SystemExit):
            trainer.train(train, val, epochs=4)
        assert len(log.of("epoch_end")) == 2
    elif path == "keyboard_interrupt":
        with pytest.raises(KeyboardInterrupt):
            trainer.train(train, val, epochs=4)
        assert len(log.of("step")) == 3 and log.of("epoch_end") == []
    else:
        result = trainer.train(train, val, epochs=4)
        if path in ("nan_stop", "inf_stop"):
            assert result == math.inf and trainer.stop_reason == "non_finite_loss"
            assert len(log.of("epoch_end")) == 1
        elif path == "early_stop":
            assert trainer.stop_reason == "early_stopping" and len(log.of("epoch_end")) == 2
            assert math.isfinite(result) and result == log.of("val_end")[-1][2]
        else:
            assert len(log.of("epoch_end")) == 4 and result == log.of("val_end")[-1][2]
    assert log.of("end") == [("end",)]
    assert log.events[-1] == ("end",)


def test_system_exit_from_a_callback_passes_through_unchanged():
    exit_ = SystemExit("scheduler said stop")
    log = Log()
    trainer = make_trainer([log, Raise(exit_, at_epoch=0)])
    with pytest.raises(SystemExit) as info:
        trainer.train(*loaders(), epochs=3)
    assert info.value is exit_ and info.value.code == "scheduler said stop"
    assert not getattr(info.value, "__notes__", None)
    assert log.of("end") == [("end",)]


def test_on_train_end_fires_when_on_train_begin_fails():
    log = Log()

    class BadStart(TrainingCallback):
        def on_train_begin(self, trainer, **kwargs):
            raise ValueError("bad start")

    trainer = make_trainer([BadStart(), log])
    with pytest.raises(ValueError, match="bad start"):
        trainer.train(*loaders(), epochs=2)
    assert log.of("end") == [("end",)] and log.of("epoch_begin") == []


def test_no_epochs_left_fires_begin_and_end_only():
    log = Log()
    trainer = make_trainer([log])
    trainer.train(*loaders(), epochs=3, start_epoch=3)
    assert [e[0] for e in log.events] == ["begin", "end"]


@pytest.mark.parametrize("which", ["train", "val"])
def test_nan_in_train_or_val_stops_with_inf(which):
    log = Log()
    trainer = make_trainer([NaNDetectionCallback(), log])
    trainer.criterion = nan_when(which == "train")
    assert trainer.train(*loaders(), epochs=3) == math.inf
    epoch_end = log.of("epoch_end")
    assert len(epoch_end) == 1
    train_loss, val_loss = epoch_end[0][3], epoch_end[0][4]
    assert math.isnan(train_loss) == (which == "train") and math.isnan(val_loss) == (which == "val")


def test_nan_wins_over_early_stopping_in_the_same_epoch():
    es = EarlyStoppingCallback(patience=1)
    trainer = make_trainer([es, NaNDetectionCallback()])
    trainer.criterion = nan_when(True)  # train loss NaN, val loss finite
    assert trainer.train(*loaders(), epochs=3) == math.inf
    assert trainer.stop_reason == "non_finite_loss"


def test_nan_wins_over_a_stop_of_any_priority():
    class StopNow(TrainingCallback):
        priority = 1

        def stop_reason(self):
            return "user_stop"

    trainer = make_trainer([StopNow(), NaNDetectionCallback()])
    trainer.criterion = nan_when(True)  # val_loss finite: only the NaN stop can make train() return inf
    assert trainer.train(*loaders(), epochs=3) == math.inf
    assert trainer.stop_reason == "non_finite_loss"
    trainer.criterion = torch.nn.CrossEntropyLoss()
    result = trainer.train(*loaders(), epochs=3)  # a finite run stopped by the user: its val_loss
    assert trainer.stop_reason == "user_stop" and math.isfinite(result)


def test_without_nan_detection_a_non_finite_val_loss_still_returns_inf():
    log = Log()
    trainer = make_trainer([log])
    trainer.criterion = nan_when(False)
    assert trainer.train(*loaders(), epochs=2) == math.inf
    assert len(log.of("epoch_end")) == 2  # nothing stopped it


@pytest.mark.parametrize("which", ["train", "val"])
def test_an_exhausted_or_empty_loader_is_an_error_not_a_zero_loss(which):
    x, y = data()
    log = Log()
    trainer = make_trainer([log])
    once = iter([(x, y)])  # a one-shot iterator: empty from the second epoch on
    loaders_ = (once, [(x, y)]) if which == "train" else ([(x, y)], [])
    with pytest.raises(ValueError, match=f"{'training' if which == 'train' else 'validation'} loader gave no "):
        trainer.train(*loaders_, epochs=3)
    assert log.of("end") == [("end",)]


def all_builtins(epochs):
    return [NaNDetectionCallback(), OptimizerModeCallback(), GradientMonitorCallback(), LossPredictionCallback(epochs),
            OverfitDetectionCallback(warmup_epochs=0, window_size=1), EarlyStoppingCallback(patience=5)]


def test_no_host_sync_per_step(monkeypatch):
    """Reading a tensor's value (`item`, `float`, `tolist`, ...) happens a fixed number of times per
    epoch, whatever the number of batches, with every per-step built-in in place."""
    counts = count_reads(monkeypatch)

    def syncs(n_samples, epochs=3):
        x, y = data(n=n_samples)
        trainer = make_trainer(all_builtins(epochs), metrics={"accuracy": accuracy})
        counts["n"] = 0
        trainer.train(TensorBatches(x, y, 8, shuffle=True), TensorBatches(x, y, 8), epochs=epochs)
        return counts["n"]

    small, large = syncs(32), syncs(512)  # 4 vs 64 batches per epoch, train and val
    assert small == large
    assert small <= 3 * 3  # train loss, validation means, gradient max per epoch


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_cuda_sync_in_the_training_steps():
    """With CUDA's sync debug mode set to "error" from the first to the last training step, an
    epoch runs through (the one read of the epoch's loss comes after the last step)."""
    x, y = data(n=256)
    loader = TensorBatches(x, y, 8, device="cuda")

    class Syncless(TrainingCallback):
        priority = 1000  # after every other callback's hooks

        def on_train_epoch_begin(self, trainer, **kwargs):
            torch.cuda.set_sync_debug_mode("error")

        def on_train_step_end(self, trainer, *, batch_idx, **kwargs):
            if batch_idx == len(loader) - 1:
                torch.cuda.set_sync_debug_mode("default")

    trainer = make_trainer([GradientMonitorCallback(), OptimizerModeCallback(), Syncless()], device="cuda")
    try:
        assert math.isfinite(trainer.train_epoch(loader, 0))
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_batches_are_moved_to_the_trainer_device():
    x, y = data()
    seen = []

    class Check(TrainingCallback):
        def on_train_step_end(self, trainer, *, loss, **kwargs):
            seen.append(loss.device)

    trainer = make_trainer([Check()], device="cpu")
    trainer.train(make_loader(torch.utils.data.TensorDataset(x, y), 32, True, 0, "cpu"), [(x, y)], 1)
    assert len(seen) == 3 and all(d.type == "cpu" for d in seen)


def test_train_sets_the_loaders_epoch():
    x, y = data(n=40)
    loader = TensorBatches(x, y, 8, shuffle=True, seed=3)
    orders = []

    def recording(outputs, targets):
        orders.append(targets.clone())
        return torch.nn.functional.cross_entropy(outputs, targets)

    model = make_model()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), None, recording, [])
    trainer.train(loader, [(x[:8], y[:8])], epochs=4, start_epoch=2)
    per_epoch = len(loader) + 1  # 5 training batches and 1 validation batch
    for i, epoch in enumerate((2, 3)):
        got = torch.cat(orders[i * per_epoch:i * per_epoch + len(loader)])
        reference = TensorBatches(x, y, 8, shuffle=True, seed=3)
        reference.set_epoch(epoch)
        assert torch.equal(got, torch.cat([t for _, t in reference]))


def test_lr_is_the_first_param_groups_lr():
    model = make_model()
    optimizer = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.3},
                                 {"params": model[3].parameters(), "lr": 0.7}])
    assert Trainer(model, optimizer, None, torch.nn.CrossEntropyLoss()).lr == 0.3


# --- any batch, a custom step, precision, accumulation ----------------------------------------

class DictTrainer(Trainer):
    """A model that takes a dict batch and computes its own loss (as a Hugging Face model does)."""

    def compute_loss(self, batch):
        logits = self.model(batch["features"])
        return torch.nn.functional.cross_entropy(logits, batch["labels"]), logits, batch["labels"]


class DictBatches:
    """(features, labels) pairs served as dicts."""

    def __init__(self, x, y, size):
        self.x, self.y, self.size = x, y, size

    def __len__(self):
        return -(-len(self.x) // self.size)

    def __iter__(self):
        for start in range(0, len(self.x), self.size):
            yield {"features": self.x[start:start + self.size], "labels": self.y[start:start + self.size]}


def test_a_custom_step_on_dict_batches_trains_and_feeds_the_metrics():
    x, y = data()
    torch.manual_seed(0)
    model = make_model()
    trainer = DictTrainer(model, torch.optim.SGD(model.parameters(), lr=0.5), None, None,
                          metrics={"accuracy": accuracy})
    seen = Recorder()
    trainer.callbacks.add(seen)
    trainer.train(DictBatches(x, y, 16), DictBatches(x, y, 32), epochs=6)
    first, last = seen.epochs[0], seen.epochs[-1]
    assert last["val_loss"] < first["val_loss"]
    assert 0.8 < last["metrics"]["val_accuracy"] <= 1.0
    with torch.no_grad():  # the reported accuracy is the model's, over the whole validation set
        assert last["metrics"]["val_accuracy"] == pytest.approx(accuracy(model.eval()(x), y).item(), abs=1e-6)


class Recorder(TrainingCallback):
    def __init__(self):
        self.epochs = []

    def on_epoch_end(self, trainer, *, epoch, train_loss, val_loss, metrics, **kwargs):
        self.epochs.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "metrics": dict(metrics)})


class NoTargets(Trainer):
    """A self-supervised step: no targets, so no metrics; samples counted from the batch."""

    def compute_loss(self, batch):
        inputs, _ = batch
        return self.model(inputs).pow(2).mean(), None, None


def test_without_targets_there_are_no_metrics_and_samples_come_from_the_batch():
    trainer = NoTargets(make_model(), torch.optim.SGD(make_model().parameters(), lr=0.0), None, None,
                        metrics={"accuracy": accuracy})
    recorder = Recorder()
    trainer.callbacks.add(recorder)
    x, y = data(n=40)
    trainer.train(TensorBatches(x, y, 16), TensorBatches(x, y, 16), epochs=1)
    assert math.isnan(recorder.epochs[0]["metrics"]["val_accuracy"])
    trainer.model.eval()
    with torch.no_grad():  # the mean over 40 samples in batches of 16, 16 and 8, weighted by size
        expected = sum(float(trainer.model(x[s:s + 16]).pow(2).mean()) * len(x[s:s + 16]) for s in (0, 16, 32)) / 40
    assert recorder.epochs[0]["val_loss"] == pytest.approx(expected, rel=1e-5)


def test_the_default_step_names_what_it_needs():
    trainer = make_trainer()
    with pytest.raises(TypeError, match=r"needs a pair \(inputs, targets\), but got \{a: shape"):
        trainer.compute_loss({"a": torch.ones(2, 6)})
    no_criterion = Trainer(make_model(), torch.optim.SGD(make_model().parameters(), lr=0.1), None, None)
    with pytest.raises(TypeError, match="run.criterion is null"):
        no_criterion.compute_loss((torch.ones(2, 6), torch.zeros(2, dtype=torch.long)))


def linear_model():
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))  # no dropout, no norm


@pytest.mark.parametrize("n", [96, 80])  # 80: the last optimizer step has one batch of 16 instead of two
def test_accumulating_two_batches_of_b_matches_one_batch_of_2b(n):
    x, y = data(n=n)
    results = []
    for batch_size, steps in ((32, 1), (16, 2)):
        model = linear_model()
        trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9), None,
                          torch.nn.CrossEntropyLoss(), accumulate_steps=steps)
        trainer.train(TensorBatches(x, y, batch_size), TensorBatches(x, y, 64), epochs=3)
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.allclose(results[0], results[1], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(results[0], torch.cat([p.detach().flatten() for p in linear_model().parameters()]))


def test_accumulation_steps_the_optimizer_every_k_batches_and_after_the_last():
    class Counting(TrainingCallback):
        def __init__(self):
            self.steps = []

        def on_train_epoch_begin(self, trainer, **kwargs):
            self.steps.append(0)

        def on_before_optimizer_step(self, trainer, **kwargs):
            self.steps[-1] += 1

    counting = Counting()
    trainer = make_trainer([counting], accumulate_steps=3)
    x, y = data(n=112)  # 7 batches of 16: steps after batches 3, 6 and 7
    trainer.train(TensorBatches(x, y, 16), TensorBatches(x, y, 32), epochs=2)
    assert counting.steps == [3, 3]


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_mixed_precision_autocasts_the_forward_and_keeps_fp32_parameters(precision, dtype):
    seen = set()
    model = make_model()
    model[0].register_forward_hook(lambda module, args, out: seen.add(out.dtype))
    trainer = make_trainer(model=model, precision=precision)
    final = trainer.train(*loaders(), epochs=2)
    assert seen == {dtype}
    assert math.isfinite(final)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert trainer.scaler.is_enabled() == (precision == "fp16")


def test_an_fp16_step_the_scaler_skips_is_not_a_nan_stop():
    """A loss scale of 2**24 overflows fp16 gradients: the scaler skips those steps and lowers the
    scale until steps go through; the run neither stops nor reports a non-finite loss."""
    model = make_model()
    trainer = make_trainer([NaNDetectionCallback(), GradientMonitorCallback()], model=model, precision="fp16")
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 24)
    before = [p.detach().clone() for p in model.parameters()]
    final = trainer.train(*loaders(), epochs=3)
    assert trainer.stop_reason is None and math.isfinite(final)
    assert trainer.scaler.get_scale() < 2.0 ** 24  # steps were skipped
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # and later ones taken
    assert math.isfinite(trainer._max_grad_norm)  # the skipped steps' inf norms are not reported


def test_precision_and_accumulation_are_checked():
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16, but got 'fp8'"):
        make_trainer(precision="fp8")
    with pytest.raises(ValueError, match="accumulate_steps >= 1 must hold, but got 0"):
        make_trainer(accumulate_steps=0)
