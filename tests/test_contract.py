"""The user's specification (seed-callbacks.md) holds: hook names, priorities, and its example."""

from __future__ import annotations

import inspect
import re
import textwrap
from pathlib import Path

import torch

import tuneloop.callbacks as callbacks_module
from tuneloop.callbacks import TrainingCallback
from tuneloop.data import TensorBatches
from tuneloop.trainer import Trainer

SEED = Path(__file__).resolve().parents[2] / "shared" / "seed-callbacks.md"
SEVEN_HOOKS = ["on_train_begin", "on_train_epoch_begin", "on_train_step_end", "on_val_begin",
               "on_val_end", "on_epoch_end", "on_train_end"]
KWARGS = {  # SPEC §1: each hook's keyword arguments besides trainer
    "on_train_begin": {"epochs", "start_epoch"}, "on_train_epoch_begin": {"epoch"},
    "on_train_step_end": {"batch_idx", "loss"}, "on_val_begin": {"epoch"},
    "on_val_end": {"epoch", "val_loss", "metrics"},
    "on_epoch_end": {"epoch", "train_loss", "val_loss", "metrics"}, "on_train_end": set(),
}
PRIORITIES = {"NaNDetectionCallback": 5, "OptimizerModeCallback": 10, "GradientMonitorCallback": 12,
              "LossPredictionCallback": 70, "OverfitDetectionCallback": 75, "WandbLoggingCallback": 80,
              "PrunerCallback": 85, "EarlyStoppingCallback": 90, "CheckpointCallback": 95}


def seed_hook_names() -> list[str]:
    """Hook names the seed document mentions (falls back to the seven when it is not beside the repo)."""
    if not SEED.exists():
        return SEVEN_HOOKS
    names = set(re.findall(r"\bon_[a-z_]+\b", SEED.read_text()))
    return sorted(names)


def test_every_seed_hook_exists_as_a_documented_no_op():
    names = seed_hook_names()
    assert set(SEVEN_HOOKS) <= set(names)
    base = TrainingCallback()
    for name in names:
        hook = getattr(TrainingCallback, name)
        assert hook.__doc__ and len(hook.__doc__.strip().splitlines()) == 1, name
        params = inspect.signature(hook).parameters
        assert "trainer" in params and any(p.kind is p.VAR_KEYWORD for p in params.values())
        assert KWARGS[name] <= set(params), name
        assert getattr(base, name)(None, **{k: 0 for k in KWARGS[name]}) is None


def test_builtins_are_importable_with_their_priorities():
    for name, priority in PRIORITIES.items():
        cls = getattr(callbacks_module, name)
        assert issubclass(cls, TrainingCallback) and cls.priority == priority


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


def test_seed_example_runs_unchanged_but_for_its_import(capsys):
    if SEED.exists():  # the example in this test is the seed's, word for word
        text = SEED.read_text()
        body = SEED_EXAMPLE.split("class BestLossTrackerCallback", 1)[1]
        assert textwrap.dedent("class BestLossTrackerCallback" + body).strip() in text
    namespace: dict = {}
    exec(SEED_EXAMPLE, namespace)
    tracker = namespace["BestLossTrackerCallback"]()
    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    model = torch.nn.Linear(4, 2)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), None, torch.nn.CrossEntropyLoss(),
                      [tracker])
    loader = TensorBatches(x, y, batch_size=16)
    trainer.train(loader, loader, epochs=5)
    assert 0 <= tracker.best_epoch < 5 and trainer._best_val_loss == tracker.best_val_loss
    assert f"Training complete. Best val_loss: {tracker.best_val_loss:.4e} at epoch {tracker.best_epoch}" in (
        capsys.readouterr().out)
