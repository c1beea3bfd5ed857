"""WandbLoggingCallback with real wandb in offline mode; values read back from the offline run file."""

from __future__ import annotations

import math

import pytest
import torch

from tuneloop.callbacks import (GradientMonitorCallback, LossPredictionCallback, OverfitDetectionCallback,
                                TrainingCallback, WandbLoggingCallback)
from tuneloop.data import TensorBatches
from tuneloop.metrics import accuracy
from tuneloop.trainer import Trainer
from wandb_records import history, run_file, summary


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Offline W&B writing under tmp_path (passed as `dir`: wandb keeps its first WANDB_DIR per process)."""
    for key, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true",
                       "WANDB_DISABLE_GIT": "true", "WANDB_CONSOLE": "off"}.items():
        monkeypatch.setenv(key, value)
    return tmp_path


class Records(TrainingCallback):
    priority = 99

    def __init__(self):
        self.rows = []

    def on_epoch_end(self, trainer, *, epoch, train_loss, val_loss, metrics, **kwargs):
        self.rows.append(trainer.epoch_record(epoch, train_loss, val_loss, metrics))


def train(callbacks, epochs, model=None, fail_at=None):
    torch.manual_seed(0)
    model = model or torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.ReLU(), torch.nn.Linear(12, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 3, 0.5)
    trainer = Trainer(model, optimizer, scheduler, torch.nn.CrossEntropyLoss(), callbacks,
                      metrics={"accuracy": accuracy})
    x, y = torch.randn(120, 6), torch.randint(0, 3, (120,))
    trainer.train(TensorBatches(x, y, 16, shuffle=True), TensorBatches(x, y, 60), epochs)
    return trainer


def test_one_log_per_epoch_with_every_signal(offline, capsys):
    recorder = Records()
    wb = WandbLoggingCallback(project="tuneloop-test", config={"lr": 0.1}, dir=str(offline))
    train([GradientMonitorCallback(), LossPredictionCallback(12), OverfitDetectionCallback(0, 1), wb, recorder],
          epochs=12)
    rows = history(run_file(offline), at_least=12)
    assert len(rows) == 12
    for logged, computed in zip(rows, recorder.rows):
        assert logged == pytest.approx(computed)
    assert {"train_loss", "val_loss", "lr", "val_accuracy", "max_grad_norm"} <= set(rows[0])
    assert "predicted_final_loss" not in rows[8] and "predicted_final_loss" in rows[9]
    assert math.isclose(rows[9]["predicted_final_loss"], recorder.rows[9]["predicted_final_loss"])
    assert rows[0]["lr"] == 0.1 and rows[3]["lr"] == 0.05
    out = capsys.readouterr().out
    assert out.count("[wandb] epoch") == 1 and "[wandb] epoch 9:" in out
    assert wb.run is None  # finished at on_train_end


def test_predicted_final_loss_is_in_loss_units(offline):
    class Fixed(TrainingCallback):
        priority = 70

        def on_val_end(self, trainer, **kwargs):
            trainer._loss_prediction = 2.0  # -log10(0.01)

    train([Fixed(), WandbLoggingCallback(project="t", dir=str(offline))], epochs=1)
    assert history(run_file(offline))[0]["predicted_final_loss"] == pytest.approx(0.01)


def test_summary_and_finish_when_training_raises(offline):
    class Boom(TrainingCallback):
        def on_epoch_end(self, trainer, *, epoch, **kwargs):
            if epoch == 1:
                raise RuntimeError("boom")

    wb = WandbLoggingCallback(project="t", dir=str(offline))
    wb.summary["final_state"] = "failed"
    with pytest.raises(RuntimeError):
        train([wb, Boom()], epochs=4)
    path = run_file(offline)
    assert len(history(path)) == 1 and summary(path)["final_state"] == "failed"  # Boom (50) ran before W&B (80)
    assert wb.run is None


def test_an_active_run_is_reused_and_left_open(offline):
    import wandb

    run = wandb.init(project="outer", dir=str(offline))
    try:
        wb = WandbLoggingCallback(project="ignored")
        train([wb], epochs=2)
        assert wandb.run is run  # not finished by the callback
        run.log({"after": 1})
    finally:
        run.finish()
    rows = history(run_file(offline), at_least=3)
    assert [sorted(r) for r in rows][:2] == [["epoch", "lr", "train_loss", "val_accuracy", "val_loss"]] * 2
    assert rows[-1] == {"after": 1}
