"""MetricsCsvCallback: one row per epoch of the full epoch record, and every epoch once after a
resume from a checkpoint (its rows travel in the checkpoint)."""

from __future__ import annotations

import csv

import torch
from torch import nn

from tuneloop.callbacks import CheckpointCallback, LossPredictionCallback
from tuneloop.callbacks.metrics_csv import MetricsCsvCallback
from tuneloop.checkpoints import load_state, restore_state
from tuneloop.training.data import TensorBatches
from tuneloop.trainer import Trainer

EPOCHS = 12


def trainer_with(callbacks) -> tuple[Trainer, TensorBatches, TensorBatches]:
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
    trainer = Trainer(model, optimizer, scheduler, nn.CrossEntropyLoss(), callbacks,
                      metrics={"score": lambda outputs, targets: outputs.mean()})
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 4, generator=generator), torch.randint(0, 2, (32,), generator=generator)
    return trainer, TensorBatches(x, y, 8, shuffle=True, seed=0), TensorBatches(x, y, 32)


def rows(path) -> list[dict]:
    return list(csv.DictReader(path.open()))


def test_one_row_per_epoch_with_every_reported_value(tmp_path):
    logger = MetricsCsvCallback(tmp_path / "metrics.csv")
    trainer, train, val = trainer_with([LossPredictionCallback(EPOCHS), logger])
    trainer.train(train, val, EPOCHS)
    table = rows(tmp_path / "metrics.csv")
    assert [int(r["epoch"]) for r in table] == list(range(EPOCHS))
    assert list(table[0]) == ["epoch", "train_loss", "val_loss", "lr", "val_score", "predicted_final_loss"]
    assert table[0]["predicted_final_loss"] == "" and table[-1]["predicted_final_loss"] != ""  # from epoch 10
    assert [float(r["lr"]) for r in table[:4]] == [0.1, 0.1, 0.1, 0.05]
    assert [float(r["val_loss"]) for r in table] == [r["val_loss"] for r in logger.rows]
    assert not [p.name for p in tmp_path.iterdir() if p.name != "metrics.csv"]  # no temporary files left


def test_a_resumed_run_holds_every_epoch_once(tmp_path):
    whole = tmp_path / "whole.csv"
    trainer, train, val = trainer_with([MetricsCsvCallback(whole),
                                        CheckpointCallback(tmp_path / "ck", save_every_n_epochs=4, keep_last_k=5)])
    trainer.train(train, val, EPOCHS)

    resumed = tmp_path / "resumed.csv"  # a new process: fresh callbacks, state from epoch 7's checkpoint
    trainer, train, val = trainer_with([MetricsCsvCallback(resumed),
                                        CheckpointCallback(tmp_path / "ck2", save_every_n_epochs=4)])
    start = restore_state(trainer, load_state(tmp_path / "ck" / "epoch_7"))
    assert start == 8
    trainer.train(train, val, EPOCHS, start)
    assert rows(resumed) == rows(whole)
