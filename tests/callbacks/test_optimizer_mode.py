import math

import pytest
import schedulefree
import torch
from pytorch_optimizer import SPlus

from tuneloop.callbacks import OptimizerModeCallback, TrainingCallback
from tuneloop.training.data import TensorBatches
from tuneloop.trainer import Trainer

OPTIMIZERS = pytest.mark.parametrize("make_optimizer", [
    lambda params: SPlus(params, lr=0.05),
    lambda params: schedulefree.AdamWScheduleFree(params, lr=0.05),
], ids=["SPlus", "AdamWScheduleFree"])


def flat(model):
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


def in_train_mode(optimizer) -> bool:
    modes = {group["train_mode"] for group in optimizer.param_groups}
    assert len(modes) == 1
    return modes.pop()


def model_and_data(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    x, y = torch.randn(96, 6), torch.randint(0, 3, (96,))
    return model, x, y


class ModeChecker(TrainingCallback):
    """At priority 50 (after OptimizerMode's switch at 10): records the optimizer's mode in each
    hook, and the weights and an independently computed loss during validation."""

    priority = 50

    def __init__(self, x_val, y_val):
        self.x_val, self.y_val = x_val, y_val
        self.modes = []
        self.at_val_begin, self.at_val_end, self.losses = [], [], []

    def on_train_epoch_begin(self, trainer, **kwargs):
        self.modes.append(("epoch_begin", in_train_mode(trainer.optimizer)))

    def on_train_step_end(self, trainer, **kwargs):
        self.modes.append(("step", in_train_mode(trainer.optimizer)))

    def on_val_begin(self, trainer, **kwargs):
        self.modes.append(("val_begin", in_train_mode(trainer.optimizer)))
        self.at_val_begin.append(flat(trainer.model))

    def on_val_end(self, trainer, *, val_loss, **kwargs):
        self.modes.append(("val_end", in_train_mode(trainer.optimizer)))
        self.at_val_end.append(flat(trainer.model))
        with torch.no_grad():
            expected = torch.nn.functional.cross_entropy(trainer.model(self.x_val), self.y_val).item()
        self.losses.append((val_loss, expected))


@OPTIMIZERS
def test_the_modes_really_differ_after_some_steps(make_optimizer):
    model, x, y = model_and_data()
    optimizer = make_optimizer(model.parameters())
    optimizer.train()
    for i in range(0, 96, 16):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x[i:i + 16]), y[i:i + 16]).backward()
        optimizer.step()
    train_weights = flat(model)
    optimizer.eval()
    eval_weights = flat(model)
    assert (train_weights - eval_weights).abs().max() > 1e-4
    optimizer.train()
    assert torch.allclose(flat(model), train_weights, atol=1e-6)


@OPTIMIZERS
def test_validation_runs_in_eval_mode_and_training_in_train_mode(make_optimizer):
    model, x, y = model_and_data()
    optimizer = make_optimizer(model.parameters())
    x_val, y_val = x[:32], y[:32]
    checker = ModeChecker(x_val, y_val)
    trainer = Trainer(model, optimizer, None, torch.nn.CrossEntropyLoss(), [checker, OptimizerModeCallback()])
    trainer.train(TensorBatches(x, y, 16, shuffle=True), TensorBatches(x_val, y_val, 32), epochs=3)

    steps = [mode for kind, mode in checker.modes if kind == "step"]
    assert len(steps) == 3 * 6 and all(steps)  # every optimizer step in train mode
    assert [mode for kind, mode in checker.modes if kind == "epoch_begin"] == [True] * 3
    assert [mode for kind, mode in checker.modes if kind in ("val_begin", "val_end")] == [False] * 6
    for begin, end in zip(checker.at_val_begin, checker.at_val_end):
        assert torch.equal(begin, end)  # the weights validation used are the eval-mode ones throughout
    for val_loss, expected in checker.losses:
        assert val_loss == pytest.approx(expected, rel=1e-5)

    # After training the optimizer is left in eval mode: the weights are the ones validation saw,
    # and they differ from the train-mode weights the steps used.
    eval_weights = flat(model)
    assert torch.equal(checker.at_val_end[-1], eval_weights)
    optimizer.train()
    train_weights = flat(model)
    assert not torch.allclose(train_weights, eval_weights, atol=1e-5)
    with torch.no_grad():
        train_mode_loss = torch.nn.functional.cross_entropy(model(x_val), y_val).item()
    assert train_mode_loss != pytest.approx(checker.losses[-1][0], rel=1e-6)


def test_validation_without_the_callback_sees_train_mode_weights():
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    optimizer = schedulefree.AdamWScheduleFree(model.parameters(), lr=0.05)
    optimizer.train()
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    checker = ModeChecker(x, y)
    trainer = Trainer(model, optimizer, None, torch.nn.CrossEntropyLoss(), [checker])
    trainer.train(TensorBatches(x, y, 8), TensorBatches(x, y, 32), epochs=1)
    assert [mode for kind, mode in checker.modes if kind == "val_begin"] == [True]
    optimizer.eval()
    assert not torch.allclose(checker.at_val_begin[-1], flat(model))


class Recording(torch.optim.SGD):
    """A plain optimizer that also has train()/eval() methods: they are called, in order."""

    def __init__(self, params, calls):
        super().__init__(params, lr=0.1)
        self.calls = calls

    def train(self):
        self.calls.append("optimizer.train")

    def eval(self):
        self.calls.append("optimizer.eval")


def test_any_optimizer_with_train_and_eval_methods_is_switched_around_validation():
    calls = []

    class Hooks(TrainingCallback):
        priority = 50

        def on_train_step_end(self, trainer, *, batch_idx, **kwargs):
            calls.append(f"step{batch_idx}")

        def on_val_end(self, trainer, **kwargs):
            calls.append("val_end")

    model = torch.nn.Linear(2, 2)
    trainer = Trainer(model, Recording(model.parameters(), calls), None, torch.nn.MSELoss(),
                      [Hooks(), OptimizerModeCallback()])
    x = torch.randn(4, 2)
    trainer.train([(x[:2], x[:2]), (x[2:], x[2:])], [(x, x)], epochs=2)
    assert calls == ["optimizer.train", "step0", "step1", "optimizer.eval", "val_end"] * 2


def test_plain_optimizer_is_a_no_op():
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    assert not hasattr(optimizer, "train") and not hasattr(optimizer, "eval")
    trainer = Trainer(model, optimizer, None, torch.nn.MSELoss(), [])
    before = (optimizer.state_dict(), flat(model))
    callback = OptimizerModeCallback()
    callback.on_train_epoch_begin(trainer, epoch=0)
    callback.on_val_begin(trainer, epoch=0)
    assert model.training  # the model's own train()/eval() were not touched
    assert optimizer.state_dict() == before[0] and torch.equal(flat(model), before[1])
    # and a whole run with AdamW works
    x = torch.randn(8, 2)
    trainer.callbacks = type(trainer.callbacks)([callback])
    assert trainer.train([(x, x)], [(x, x)], epochs=2) > 0


def test_non_callable_train_or_eval_attributes_are_ignored():
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.train = True  # not a method
    optimizer.eval = None
    trainer = Trainer(model, optimizer, None, torch.nn.MSELoss(), [OptimizerModeCallback()])
    trainer.model.eval()
    OptimizerModeCallback().on_train_epoch_begin(trainer, epoch=0)  # calling True() would raise TypeError
    OptimizerModeCallback().on_val_begin(trainer, epoch=0)
    assert optimizer.train is True and optimizer.eval is None  # left as they were, not called or replaced
    assert not trainer.model.training  # nor did the callback fall back to the model's train()
    x = torch.randn(8, 2)
    before = flat(model)
    assert math.isfinite(trainer.train([(x, x)], [(x, x)], epochs=2))  # a whole run works with the callback
    assert not torch.equal(flat(model), before)  # and it really trained


def test_an_optimizer_that_is_the_model_is_not_called():
    calls = []

    class ModelAsOptimizer(torch.nn.Linear):
        def train(self, mode=True):
            calls.append(("train", mode))
            return super().train(mode)

        def eval(self):
            calls.append(("eval",))
            return super().eval()

    model = ModelAsOptimizer(2, 2)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), None, torch.nn.MSELoss(), [])
    trainer.optimizer = model
    calls.clear()
    OptimizerModeCallback().on_train_epoch_begin(trainer, epoch=0)
    OptimizerModeCallback().on_val_begin(trainer, epoch=0)
    assert calls == []
