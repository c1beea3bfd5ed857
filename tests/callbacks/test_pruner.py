"""PrunerCallback: one report per epoch after the checkpoint, with the own-end flags; SystemExit passes."""

from __future__ import annotations

import pytest
import torch

from tuneloop.callbacks import (CheckpointCallback, EarlyStoppingCallback, GradientMonitorCallback,
                                PrunerCallback, TrainingCallback)
from tuneloop.data import TensorBatches
from tuneloop.trainer import Trainer


def trainer_with(callbacks):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), None, torch.nn.CrossEntropyLoss(),
                      callbacks)
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    return trainer, TensorBatches(x, y, 8), TensorBatches(x, y, 32)


def test_constructible_without_ray_and_ordered_after_checkpoint():
    pruner = PrunerCallback()
    assert pruner.priority == 85 and pruner.hook_priority == {"on_epoch_end": 100}
    assert CheckpointCallback.priority < pruner.hook_priority["on_epoch_end"]


def test_one_report_per_epoch_with_the_epochs_checkpoint(tmp_path):
    reports = []
    pruner = PrunerCallback(report=lambda metrics, checkpoint: reports.append((metrics, checkpoint)),
                            static={"node_id": "n1"})
    trainer, train, val = trainer_with([pruner, GradientMonitorCallback(),
                                        CheckpointCallback(tmp_path, save_every_n_epochs=2)])
    trainer.train(train, val, epochs=5)
    assert [m["epoch"] for m, _ in reports] == [0, 1, 2, 3, 4]
    assert [c for _, c in reports] == [None, str(tmp_path / "epoch_1"), None, str(tmp_path / "epoch_3"),
                                       str(tmp_path / "epoch_4")]
    for metrics, checkpoint in reports:
        assert {"train_loss", "val_loss", "lr", "max_grad_norm", "node_id", "reported_at"} <= set(metrics)
        if checkpoint:  # the checkpoint exists when the report goes out
            assert (tmp_path / checkpoint.split("/")[-1] / "state.pt").exists()
    assert [m["trial_done"] for m, _ in reports] == [False] * 4 + [True]
    assert reports[-1][0]["done_reason"] == "complete"


def test_own_early_stop_is_flagged():
    reports = []
    trainer, train, val = trainer_with([PrunerCallback(report=lambda m, c: reports.append(m)),
                                        EarlyStoppingCallback(patience=1, min_delta=100.0)])
    trainer.train(train, val, epochs=6)
    assert [r["trial_done"] for r in reports] == [False, True]
    assert reports[-1]["done_reason"] == "early_stopping"


def test_system_exit_from_the_report_ends_training_with_on_train_end():
    ended = []

    class End(TrainingCallback):
        def on_train_end(self, trainer, **kwargs):
            ended.append(True)

    def report(metrics, checkpoint):
        if metrics["epoch"] == 1:
            raise SystemExit(0)  # what tune.report raises when a scheduler stops the trial

    trainer, train, val = trainer_with([PrunerCallback(report=report), End()])
    with pytest.raises(SystemExit):
        trainer.train(train, val, epochs=5)
    assert ended == [True]
