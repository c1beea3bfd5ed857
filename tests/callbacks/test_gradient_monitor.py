import math

import pytest
import torch

from tuneloop.callbacks import GradientMonitorCallback, TrainingCallback
from tuneloop.training.data import TensorBatches
from tuneloop.trainer import Trainer
from tl_testing import count_reads


def true_norm(model) -> float:
    """The total L2 norm of all gradients, computed the plain way in float64."""
    squares = sum(float((p.grad.double() ** 2).sum()) for p in model.parameters() if p.grad is not None)
    return math.sqrt(squares)


class Independent(TrainingCallback):
    """Per batch the true norm (priority 11: before the monitor's step hook, after backward), and
    per epoch the monitor's result (priority 13: right after the monitor's epoch-end hook)."""

    hook_priority = {"on_train_step_end": 11, "on_epoch_end": 13}

    def __init__(self):
        self.per_epoch: dict[int, list[float]] = {}
        self.reported: dict[int, float | None] = {}

    def on_train_step_end(self, trainer, **kwargs):
        self.per_epoch.setdefault(self.epoch, []).append(true_norm(trainer.model))

    def on_train_epoch_begin(self, trainer, *, epoch, **kwargs):
        self.epoch = epoch

    def on_epoch_end(self, trainer, *, epoch, **kwargs):
        self.reported[epoch] = trainer._max_grad_norm


def trainer_with(callbacks, scale=1.0, criterion=None, model=None):
    torch.manual_seed(0)
    model = model or torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    x, y = torch.randn(64, 5) * scale, torch.randint(0, 3, (64,))
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), None,
                      criterion or torch.nn.CrossEntropyLoss(), callbacks)
    return trainer, TensorBatches(x, y, 8, shuffle=True), TensorBatches(x, y, 64)


def test_epoch_max_equals_the_true_per_batch_maximum_each_epoch():
    independent = Independent()
    trainer, train, val = trainer_with([GradientMonitorCallback(), independent])
    trainer.train(train, val, epochs=3)
    assert sorted(independent.reported) == [0, 1, 2]
    for epoch, norms in independent.per_epoch.items():
        assert len(norms) == 8
        assert isinstance(independent.reported[epoch], float)
        assert independent.reported[epoch] == pytest.approx(max(norms), rel=1e-5)
    assert trainer._max_grad_norm == independent.reported[2]


def test_the_max_is_reset_each_epoch():
    """Epoch 0 has gradients 100x larger than epoch 1: epoch 1's max must be epoch 1's alone."""
    scale = {"factor": 100.0}

    class Scale(TrainingCallback):
        priority = 0

        def on_train_epoch_begin(self, trainer, *, epoch, **kwargs):
            scale["factor"] = 100.0 if epoch == 0 else 1.0

    def criterion(outputs, targets):
        return torch.nn.functional.cross_entropy(outputs, targets) * scale["factor"]

    independent = Independent()
    trainer, train, val = trainer_with([Scale(), GradientMonitorCallback(), independent], criterion=criterion)
    trainer.train(train, val, epochs=2)
    assert independent.reported[0] > 10 * independent.reported[1]
    assert independent.reported[1] == pytest.approx(max(independent.per_epoch[1]), rel=1e-5)


def test_parameters_without_a_gradient_in_some_steps():
    """A branch the forward pass takes only in some batches: its parameters have no gradient in
    the others (zero_grad sets them to None). The norm covers the gradients that exist."""

    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
            self.frozen = torch.nn.Linear(5, 3).requires_grad_(False)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            out = self.a(x) + self.frozen(x)
            return out + self.b(x) if self.calls % 3 == 0 else out

    independent = Independent()
    trainer, train, val = trainer_with([GradientMonitorCallback(), independent], model=Branchy())
    trainer.train(train, val, epochs=2)
    for epoch in (0, 1):
        assert independent.reported[epoch] == pytest.approx(max(independent.per_epoch[epoch]), rel=1e-5)


def test_warning_once_per_epoch_with_the_count(capsys):
    independent = Independent()
    monitor = GradientMonitorCallback(warn_threshold=1e-6)
    trainer, train, val = trainer_with([monitor, independent])
    trainer.train(train, val, epochs=2)
    lines = [line for line in capsys.readouterr().out.splitlines() if "gradient norm" in line]
    assert len(lines) == 2
    assert "epoch 0" in lines[0] and "epoch 1" in lines[1]
    assert "8 batch(es)" in lines[0] and "above 1e-06" in lines[0]
    assert f"{independent.reported[0]:.4g}" in lines[0]


def test_the_warning_counts_exactly_the_batches_over_the_threshold(capsys):
    independent = Independent()
    trainer, train, val = trainer_with([GradientMonitorCallback(), independent])
    trainer.train(train, val, epochs=1)
    capsys.readouterr()
    norms = sorted(independent.per_epoch[0])
    threshold = (norms[4] + norms[5]) / 2  # between the 5th and 6th smallest: 3 batches above
    independent2 = Independent()
    trainer2, train2, val2 = trainer_with([GradientMonitorCallback(warn_threshold=threshold), independent2])
    trainer2.train(train2, val2, epochs=1)
    assert sorted(independent2.per_epoch[0]) == pytest.approx(norms)  # the same run again
    lines = [line for line in capsys.readouterr().out.splitlines() if "gradient norm" in line]
    assert len(lines) == 1 and "3 batch(es)" in lines[0]


def test_no_warning_below_threshold(capsys):
    trainer, train, val = trainer_with([GradientMonitorCallback()])
    trainer.train(train, val, epochs=2)
    assert "gradient norm" not in capsys.readouterr().out
    assert 0 < trainer._max_grad_norm < 1e4


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_gradient_is_reported_not_hidden(capsys, bad):
    state = {"step": 0}

    def poisoned(out, y):  # one batch in the middle of the epoch gets a non-finite gradient
        state["step"] += 1
        loss = torch.nn.functional.cross_entropy(out, y)
        return loss * bad if state["step"] == 4 and torch.is_grad_enabled() else loss

    trainer, train, val = trainer_with([GradientMonitorCallback()], criterion=poisoned)
    trainer.train(train, val, epochs=1)
    assert math.isnan(trainer._max_grad_norm) if math.isnan(bad) else not math.isfinite(trainer._max_grad_norm)
    out = capsys.readouterr().out
    assert "non-finite" in out and "epoch 0" in out


def test_model_without_gradients_leaves_none():
    monitor = GradientMonitorCallback()
    trainer, _, _ = trainer_with([monitor])
    trainer._max_grad_norm = 3.0  # a stale value from an earlier epoch is not kept
    monitor.on_train_epoch_begin(trainer, epoch=0)
    monitor.on_epoch_end(trainer, epoch=0)
    assert trainer._max_grad_norm is None


def test_no_host_sync_per_step(monkeypatch):
    counts = count_reads(monkeypatch)

    def reads(n_batches):
        monitor = GradientMonitorCallback(warn_threshold=1e-6)  # the warning path included
        trainer, _, _ = trainer_with([monitor])
        x, y = torch.randn(8 * n_batches, 5), torch.randint(0, 3, (8 * n_batches,))
        monitor.on_train_epoch_begin(trainer, epoch=0)
        counts["n"] = 0
        for i in range(n_batches):
            trainer.optimizer.zero_grad()
            torch.nn.functional.cross_entropy(trainer.model(x[8 * i:8 * i + 8]), y[8 * i:8 * i + 8]).backward()
            monitor.on_before_optimizer_step(trainer, optimizer=trainer.optimizer)
        steps = counts["n"]
        monitor.on_epoch_end(trainer, epoch=0)
        return steps, counts["n"] - steps

    steps_few, end_few = reads(3)
    steps_many, end_many = reads(30)
    assert steps_few == steps_many == 0  # nothing read per step
    assert end_few == end_many == 1  # one read at epoch end


def test_an_epoch_cut_short_by_an_exception_does_not_leak_into_the_next_training():
    state = {"factor": 1000.0, "steps": 0}

    def criterion(outputs, targets):
        state["steps"] += 1
        if state["factor"] > 1 and state["steps"] > 3:
            raise RuntimeError("interrupted")  # after 3 steps with huge gradients, before epoch end
        return torch.nn.functional.cross_entropy(outputs, targets) * state["factor"]

    independent = Independent()
    trainer, train, val = trainer_with([GradientMonitorCallback(), independent], criterion=criterion)
    with pytest.raises(RuntimeError, match="interrupted"):
        trainer.train(train, val, epochs=1)
    huge = max(independent.per_epoch[0])
    state["factor"] = 1.0
    independent.per_epoch.clear()
    trainer.train(train, val, epochs=1)
    assert independent.reported[0] == pytest.approx(max(independent.per_epoch[0]), rel=1e-5)
    assert independent.reported[0] < huge / 10


def test_more_steps_than_the_norms_held_at_once(monkeypatch, capsys):
    """Per-step norms are reduced in groups (PENDING_LIMIT norms at a time): an epoch of many
    groups, the last one partial, still reports the true per-batch max and the exact count."""
    from tuneloop.callbacks import gradient_monitor

    monkeypatch.setattr(gradient_monitor, "PENDING_LIMIT", 12)  # 4 parameters: 3 steps per group
    independent = Independent()
    trainer, train, val = trainer_with([GradientMonitorCallback(), independent])
    trainer.train(train, val, epochs=2)  # 8 steps per epoch: groups of 3, 3 and 2
    norms = sorted(independent.per_epoch[1])
    assert independent.reported[1] == pytest.approx(norms[-1], rel=1e-5)
    threshold = (norms[4] + norms[5]) / 2  # 3 batches above
    capsys.readouterr()
    trainer2, train2, val2 = trainer_with([GradientMonitorCallback(warn_threshold=threshold)])
    trainer2.train(train2, val2, epochs=2)
    lines = [line for line in capsys.readouterr().out.splitlines() if "gradient norm" in line]
    assert lines[-1].startswith("[tuneloop] epoch 1: 3 batch(es)")


def test_parameters_off_the_cpu_take_torchs_total_norm():
    """Off the CPU the per-step norm is torch's `get_total_norm` (fused kernels, gathered on one
    device); forced here on the CPU, the result is the same."""

    class OffTheCpu(GradientMonitorCallback):
        def on_train_epoch_begin(self, trainer, **kwargs):
            super().on_train_epoch_begin(trainer, **kwargs)
            self._on_cpu = False

    independent = Independent()
    trainer, train, val = trainer_with([OffTheCpu(), independent])
    trainer.train(train, val, epochs=2)
    for epoch in (0, 1):
        assert independent.reported[epoch] == pytest.approx(max(independent.per_epoch[epoch]), rel=1e-5)


def test_step_norms_are_the_per_step_totals_in_order_without_a_read(monkeypatch):
    from tuneloop.callbacks import gradient_monitor

    monkeypatch.setattr(gradient_monitor, "PENDING_LIMIT", 8)  # 4 parameters: groups of 2 steps

    class Keep(TrainingCallback):
        def __init__(self):
            self.grads = []

        def on_train_step_end(self, trainer, **kwargs):
            self.grads.append([p.grad.clone() for p in trainer.model.parameters()])

    keep, monitor = Keep(), GradientMonitorCallback()
    trainer, train, _ = trainer_with([monitor, keep])
    counts = count_reads(monkeypatch)
    assert monitor.step_norms() is None
    trainer.train_epoch(train, 0)  # 8 steps, no epoch end
    norms = monitor.step_norms()
    assert counts["n"] == 1  # the epoch's train loss, nothing per step nor for the norms
    assert norms.shape == (8,) and monitor.step_norms() is norms  # asking again changes nothing
    true = [math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads)) for grads in keep.grads]
    assert norms.tolist() == pytest.approx(true, rel=1e-5)
