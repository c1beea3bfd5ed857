"""The user's specification of the callback system (the seed) and the API contract hold: hook names and arguments,
priorities, import paths, the Trainer's attributes, and the seed's example callback."""

from __future__ import annotations

import hashlib
import inspect
import textwrap

import pytest
import torch

import tuneloop.callbacks as callbacks_module
from tuneloop.callbacks import EVENTS, CallbackRunner, TrainingCallback
from tuneloop.training.data import TensorBatches, make_loader
from tuneloop.trainer import Trainer

# The hooks the seed (seed-callbacks.md, the user's description of the callback system) names, in
# the order of its event flow. Written here, not read from the document: it is not in the
# repository, and a test must not compare the runner's list with itself when it is absent.
SEED_HOOKS = ["on_train_begin", "on_train_epoch_begin", "on_train_step_end", "on_val_begin",
              "on_val_end", "on_epoch_end", "on_train_end"]
# tuneloop's own hooks beyond the seed's, each with the seed hook it fires right before
ADDED_HOOKS = {"on_before_optimizer_step": "on_train_step_end"}
KWARGS = {  # each hook's keyword arguments besides trainer
    "on_before_optimizer_step": {"optimizer"},
    "on_train_begin": {"epochs", "start_epoch"}, "on_train_epoch_begin": {"epoch"},
    "on_train_step_end": {"batch_idx", "loss"}, "on_val_begin": {"epoch"},
    "on_val_end": {"epoch", "val_loss", "metrics"},
    "on_epoch_end": {"epoch", "train_loss", "val_loss", "metrics"}, "on_train_end": set(),
}
PRIORITIES = {"NaNDetectionCallback": 5, "OptimizerModeCallback": 10, "GradientMonitorCallback": 12,
              "LossPredictionCallback": 70, "OverfitDetectionCallback": 75, "WandbLoggingCallback": 80,
              "PrunerCallback": 85, "EarlyStoppingCallback": 90, "CheckpointCallback": 95}


def test_every_seed_hook_exists_on_the_base_class_and_the_runner_fires_exactly_those():
    for name in SEED_HOOKS:
        assert callable(getattr(TrainingCallback, name, None)), f"TrainingCallback lacks the seed's {name}"
    # no seed hook dropped, in the order of the seed's event flow; only the named hooks added
    assert [event for event in EVENTS if event not in ADDED_HOOKS] == SEED_HOOKS
    assert set(EVENTS) - set(SEED_HOOKS) == set(ADDED_HOOKS)
    for added, before in ADDED_HOOKS.items():
        assert EVENTS.index(added) == EVENTS.index(before) - 1
    runner = CallbackRunner([])
    for name in EVENTS:
        runner.fire(name, trainer=None)
    with pytest.raises(ValueError, match="on_train_begin"):  # an unknown event names the valid ones
        runner.fire("on_batch_end", trainer=None)


@pytest.mark.parametrize("name", [*SEED_HOOKS, *ADDED_HOOKS])
def test_every_seed_hook_is_a_no_op_with_the_spec_keyword_arguments(name):
    hook = getattr(TrainingCallback, name)
    params = inspect.signature(hook).parameters
    assert list(params)[:2] == ["self", "trainer"], name
    assert any(p.kind is p.VAR_KEYWORD for p in params.values()), f"{name} must take **kwargs"
    named = {n for n, p in params.items() if n not in ("self", "trainer") and p.kind is not p.VAR_KEYWORD}
    assert named == KWARGS[name], name
    assert hook.__doc__ and hook.__doc__.strip(), f"{name} is documented"
    base = TrainingCallback()
    arguments = {k: object() for k in KWARGS[name]}
    assert getattr(base, name)(None, **arguments) is None
    assert getattr(base, name)(trainer=None, extra="future argument", **arguments) is None


def test_spec_import_paths():
    namespace: dict = {}
    exec(textwrap.dedent("""
        from tuneloop.callbacks import (TrainingCallback, CallbackRunner,
            NaNDetectionCallback, OptimizerModeCallback, GradientMonitorCallback,
            LossPredictionCallback, OverfitDetectionCallback, WandbLoggingCallback,
            PrunerCallback, EarlyStoppingCallback, CheckpointCallback)
        from tuneloop.trainer import Trainer
    """), namespace)
    assert namespace["Trainer"] is Trainer and namespace["CallbackRunner"] is CallbackRunner
    assert set(PRIORITIES) <= set(callbacks_module.__all__)


@pytest.mark.parametrize("name, priority", sorted(PRIORITIES.items(), key=lambda item: item[1]))
def test_builtins_have_the_seed_priorities(name, priority):
    cls = getattr(callbacks_module, name)
    assert issubclass(cls, TrainingCallback) and cls.priority == priority


def test_builtins_in_a_runner_run_in_the_seed_order():
    cb = callbacks_module
    runner = CallbackRunner([cb.EarlyStoppingCallback(), cb.OverfitDetectionCallback(), cb.LossPredictionCallback(30),
                             cb.GradientMonitorCallback(), cb.OptimizerModeCallback(), cb.NaNDetectionCallback()])
    assert [c.priority for c in runner] == [5, 10, 12, 70, 75, 90]


def test_trainer_attributes_callbacks_may_read():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    criterion = torch.nn.CrossEntropyLoss()
    trainer = Trainer(model, optimizer, scheduler, criterion, [], device="cpu")
    assert trainer.model is model and trainer.optimizer is optimizer and trainer.scheduler is scheduler
    assert trainer.criterion is criterion and trainer.device == torch.device("cpu")
    assert isinstance(trainer.callbacks, CallbackRunner) and isinstance(trainer.epochs, int)
    for shared in ("_max_grad_norm", "_overfit_gap_ratio", "_loss_prediction"):  # declared, default None
        assert getattr(trainer, shared) is None, shared
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    trainer.train([(x, y)], [(x, y)], epochs=3, start_epoch=1)
    assert trainer.epochs == 3  # the total, not the number left


class Strict(TrainingCallback):
    """Hooks with exactly the contract's keyword arguments and no **kwargs: an extra or missing
    argument from the Trainer fails the run."""

    priority = 50

    def __init__(self):
        self.calls = []

    def on_train_begin(self, trainer, *, epochs, start_epoch):
        self.calls.append("on_train_begin")

    def on_train_epoch_begin(self, trainer, *, epoch):
        self.calls.append("on_train_epoch_begin")

    def on_train_step_end(self, trainer, *, batch_idx, loss):
        self.calls.append("on_train_step_end")

    def on_val_begin(self, trainer, *, epoch):
        self.calls.append("on_val_begin")

    def on_val_end(self, trainer, *, epoch, val_loss, metrics):
        self.calls.append("on_val_end")

    def on_epoch_end(self, trainer, *, epoch, train_loss, val_loss, metrics):
        self.calls.append("on_epoch_end")

    def on_train_end(self, trainer):
        self.calls.append("on_train_end")


def test_the_trainer_fires_the_seven_events_with_exactly_the_spec_arguments():
    strict = Strict()
    model = torch.nn.Linear(3, 2)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), None, torch.nn.CrossEntropyLoss(), [strict])
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    trainer.train([(x[:4], y[:4]), (x[4:], y[4:])], [(x, y)], epochs=1)
    assert strict.calls == ["on_train_begin", "on_train_epoch_begin", "on_train_step_end", "on_train_step_end",
                            "on_val_begin", "on_val_end", "on_epoch_end", "on_train_end"]


# The seed's example, word for word but for its import line (`from callbacks import ...`).
SEED_EXAMPLE = '''
from tuneloop.callbacks import TrainingCallback

class BestLossTrackerCallback(TrainingCallback):
    priority = 60  # runs before W&B logging (80) so the value is available

    def __init__(self):
        self.best_val_loss = float("inf")
        self.best_epoch = -1

    def on_val_end(self, trainer, epoch, val_loss, metrics, **kwargs):
        if val_loss < self.best_val_loss:
            self.best_val_loss = val_loss
            self.best_epoch = epoch
            # Store on trainer so WandbLoggingCallback can pick it up
            trainer._best_val_loss = self.best_val_loss

    def on_train_end(self, trainer, **kwargs):
        from tqdm import tqdm
        tqdm.write(
            f"Training complete. Best val_loss: {self.best_val_loss:.4e} "
            f"at epoch {self.best_epoch}"
        )
'''


# sha256 of the seed's example block, from `from callbacks import TrainingCallback` to the end of
# its class (stripped), taken from seed-callbacks.md: the example below is the seed's word for word.
SEED_EXAMPLE_SHA256 = "750ce2b4f9cad55f18291780bad89a5932a3feb0afe42111ca6f6c0cdb1b67a4"


def test_the_example_is_the_seeds_word_for_word():
    seed_text = SEED_EXAMPLE.strip().replace("from tuneloop.callbacks import", "from callbacks import", 1)
    assert hashlib.sha256(seed_text.encode()).hexdigest() == SEED_EXAMPLE_SHA256


def load_example():
    namespace: dict = {}
    exec(SEED_EXAMPLE, namespace)
    return namespace["BestLossTrackerCallback"]


class ValLosses(TrainingCallback):
    priority = 61

    def __init__(self):
        self.values = []

    def on_val_end(self, trainer, *, val_loss, **kwargs):
        self.values.append(val_loss)


def test_seed_example_runs_in_a_real_training_and_prints_its_summary(capsys):
    from tuneloop.callbacks import (GradientMonitorCallback, LossPredictionCallback, NaNDetectionCallback,
                                    OptimizerModeCallback, OverfitDetectionCallback)
    from tuneloop.recipes.digits import MLP, load_data

    epochs = 4
    tracker = load_example()()
    seen = ValLosses()
    callbacks_list = [  # the seed's list (without W&B), in the seed's order
        OptimizerModeCallback(), NaNDetectionCallback(), GradientMonitorCallback(), tracker,
        LossPredictionCallback(epochs), OverfitDetectionCallback(), seen,
    ]
    runner = CallbackRunner(callbacks_list)
    assert [c.priority for c in runner] == [5, 10, 12, 60, 61, 70, 75]

    torch.manual_seed(0)
    train_set, val_set = load_data()
    model = MLP(hidden=32, layers=1, dropout=0.0)
    trainer = Trainer(model, torch.optim.Adam(model.parameters(), lr=1e-2), None, torch.nn.CrossEntropyLoss(), runner)
    result = trainer.train(make_loader(train_set, 128, True, 0, "cpu"), make_loader(val_set, 256, False, 0, "cpu"),
                           epochs=epochs)

    assert len(seen.values) == epochs and result == seen.values[-1]
    assert tracker.best_val_loss == min(seen.values) and trainer._best_val_loss == tracker.best_val_loss
    assert tracker.best_epoch == seen.values.index(min(seen.values))
    assert seen.values[-1] < seen.values[0]  # it really trained
    out = capsys.readouterr().out
    assert out.count("Training complete.") == 1
    assert f"Training complete. Best val_loss: {tracker.best_val_loss:.4e} at epoch {tracker.best_epoch}" in out


def test_seed_example_summary_is_printed_when_training_fails(capsys):
    tracker = load_example()()
    model = torch.nn.Linear(3, 2)

    def criterion(outputs, targets):
        raise RuntimeError("user loss broke")

    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), None, criterion, [tracker])
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    with pytest.raises(RuntimeError, match="user loss broke"):
        trainer.train(TensorBatches(x, y, 4), TensorBatches(x, y, 8), epochs=2)
    assert "Training complete. Best val_loss: inf at epoch -1" in capsys.readouterr().out
