"""PrunerCallback: exactly one report per epoch, after the checkpoint of that epoch is on disk, with
the full epoch record; a SystemExit from the report (a scheduler STOP) ends training unchanged."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tuneloop.callbacks import (CheckpointCallback, EarlyStoppingCallback, GradientMonitorCallback,
                                LossPredictionCallback, NaNDetectionCallback, OverfitDetectionCallback,
                                PrunerCallback, TrainingCallback)
from tuneloop.checkpoints import load_state
from tl_testing import digits_trainer


class Seen(TrainingCallback):
    """The raw per-epoch values, recorded after the checkpoint (99) and before the report (100)."""

    priority = 99

    def __init__(self, log=None):
        self.epochs, self.log = [], log

    def on_epoch_end(self, trainer, *, epoch, train_loss, val_loss, metrics, **kwargs):
        self.epochs.append({
            "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "metrics": dict(metrics),
            "lr": trainer.optimizer.param_groups[0]["lr"], "max_grad_norm": trainer._max_grad_norm,
            "loss_prediction": trainer._loss_prediction, "overfit_gap_ratio": trainer._overfit_gap_ratio,
        })
        if self.log is not None:
            self.log.append(("seen", epoch))


class Order(TrainingCallback):
    """Logs when its on_epoch_end runs."""

    def __init__(self, name, priority, log):
        self.name, self.priority, self.log = name, priority, log

    def on_epoch_end(self, trainer, *, epoch, **kwargs):
        self.log.append((self.name, epoch))


class Ended(TrainingCallback):
    def __init__(self):
        self.calls = []

    def on_train_end(self, trainer, **kwargs):
        self.calls.append(trainer.stop_reason)


def test_constructible_without_arguments_and_without_ray():
    code = ("import sys\nfrom tuneloop.callbacks import PrunerCallback\n"
            "pruner = PrunerCallback()\n"
            "assert 'ray' not in sys.modules, 'constructing the callback imported ray'\n"
            "assert pruner.priority == 85 and pruner.hook_priority == {'on_epoch_end': 100}\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_one_report_per_epoch_with_the_full_record_and_the_epochs_checkpoint(digits, tmp_path):
    epochs = 11
    log, reports = [], []

    def report(metrics, checkpoint_dir):
        log.append(("report", metrics["epoch"]))
        written = None
        if checkpoint_dir is not None:  # on disk, complete, and of this very epoch
            written = load_state(checkpoint_dir)["epoch"]
        reports.append((dict(metrics), checkpoint_dir, written))

    seen = Seen(log)
    pruner = PrunerCallback(report=report, static={"node_id": "n1", "pid": 123})
    assert pruner.priority == 85
    trainer, train, val = digits_trainer(digits, [
        pruner, Order("after", 101, log), seen, CheckpointCallback(tmp_path, save_every_n_epochs=3, keep_last_k=9),
        Order("checkpoint-done", 96, log), GradientMonitorCallback(), LossPredictionCallback(epochs),
        OverfitDetectionCallback(0, 1)])
    trainer.train(train, val, epochs)

    assert len(reports) == epochs == pruner.reports  # exactly one call per epoch
    # after CheckpointCallback (95) and everything up to 99, before 101
    assert log == [(name, e) for e in range(epochs) for name in ("checkpoint-done", "seen", "report", "after")]
    due = {2, 5, 8, 10}  # every 3rd epoch and the last one
    for (metrics, checkpoint_dir, written), raw in zip(reports, seen.epochs):
        e = raw["epoch"]
        expected = {"epoch": e, "train_loss": raw["train_loss"], "val_loss": raw["val_loss"], "lr": raw["lr"],
                    **raw["metrics"], "max_grad_norm": raw["max_grad_norm"], "node_id": "n1", "pid": 123,
                    "trial_done": e == epochs - 1, "done_reason": "complete" if e == epochs - 1 else ""}
        if raw["loss_prediction"] is not None:
            expected["predicted_final_loss"] = 10.0 ** -raw["loss_prediction"]
        if raw["overfit_gap_ratio"] is not None:
            expected["overfit_gap_ratio"] = raw["overfit_gap_ratio"]
        reported_at = metrics.pop("reported_at")
        assert isinstance(reported_at, float)
        assert metrics == expected
        assert set(raw["metrics"]) == {"val_accuracy"}
        if e in due:
            assert checkpoint_dir == str(tmp_path / f"epoch_{e}") and written == e
        else:
            assert checkpoint_dir is None
    assert ["predicted_final_loss" in m for m, _, _ in reports] == [False] * 10 + [True] * 1
    assert 0 < reports[-1][0]["predicted_final_loss"] < 5  # a loss, in loss units


def test_without_checkpoint_callback_every_report_has_no_checkpoint(digits):
    reports = []
    trainer, train, val = digits_trainer(digits, [PrunerCallback(report=lambda m, c: reports.append((m, c)))])
    trainer.train(train, val, 3)
    assert [(m["epoch"], c) for m, c in reports] == [(0, None), (1, None), (2, None)]
    assert {"train_loss", "val_loss", "lr", "val_accuracy"} <= set(reports[0][0])
    assert "max_grad_norm" not in reports[0][0] and "predicted_final_loss" not in reports[0][0]


def test_an_own_early_stop_is_flagged_in_its_last_report(digits, tmp_path):
    reports = []
    trainer, train, val = digits_trainer(digits, [
        PrunerCallback(report=lambda m, c: reports.append((m, c))),
        EarlyStoppingCallback(patience=2, min_delta=10.0), CheckpointCallback(tmp_path, save_every_n_epochs=10)])
    trainer.train(train, val, 30)
    assert [m["trial_done"] for m, _ in reports] == [False, False, True]
    assert reports[-1][0]["done_reason"] == "early_stopping"
    assert reports[-1][1] == str(tmp_path / "epoch_2")  # the stop epoch is checkpointed and reported


def test_a_non_finite_epoch_is_flagged(digits):
    class Diverge(TrainingCallback):
        priority = 1

        def on_val_begin(self, trainer, *, epoch, **kwargs):
            if epoch == 1:
                with torch.no_grad():
                    for parameter in trainer.model.parameters():
                        parameter.fill_(float("nan"))

    reports = []
    trainer, train, val = digits_trainer(digits, [PrunerCallback(report=lambda m, c: reports.append(m)),
                                                  Diverge(), NaNDetectionCallback()])
    trainer.train(train, val, 5)
    assert [(m["epoch"], m["trial_done"], m["done_reason"]) for m in reports] == [
        (0, False, ""), (1, True, "non_finite_loss")]
    assert reports[-1]["val_loss"] != reports[-1]["val_loss"]  # NaN is reported, not hidden


def test_system_exit_from_the_report_ends_training_unchanged_with_on_train_end(digits, tmp_path):
    stop = SystemExit(0)  # what tune.report raises when a scheduler stops the trial
    seen, ended, reports = Seen(), Ended(), []

    def report(metrics, checkpoint_dir):
        reports.append(metrics["epoch"])
        if metrics["epoch"] == 1:
            raise stop

    trainer, train, val = digits_trainer(digits, [PrunerCallback(report=report), seen, ended,
                                                  CheckpointCallback(tmp_path)])
    with pytest.raises(SystemExit) as info:
        trainer.train(train, val, 5)
    assert info.value is stop and info.value.code == 0  # the same exception, nothing swallowed or wrapped
    assert not getattr(info.value, "__notes__", None)
    assert reports == [0, 1] and [e["epoch"] for e in seen.epochs] == [0, 1]  # no epoch after the stop
    assert ended.calls == ["pruned"]  # on_train_end fired once, and can tell the trial was pruned
    assert trainer.optimizer.param_groups[0]["lr"] == 0.05  # no scheduler step after the stop


def test_an_error_in_the_report_propagates_with_the_callback_named(digits):
    ended = Ended()

    def report(metrics, checkpoint_dir):
        raise ConnectionError("storage unreachable")

    trainer, train, val = digits_trainer(digits, [PrunerCallback(report=report), ended])
    with pytest.raises(ConnectionError, match="storage unreachable") as info:
        trainer.train(train, val, 3)
    assert any("PrunerCallback" in note for note in info.value.__notes__)
    assert ended.calls == [None]


def test_lost_reports_are_sent_again_and_a_stop_among_them_passes_through():
    """A restored trial's replayed epochs (`report_lost`) and its end (`report_end`): each is one
    report; a scheduler STOP (SystemExit) passes through both, so Ray's thread ends with it."""
    from tuneloop.callbacks import PrunerCallback

    sent = []

    def report(metrics, checkpoint_dir):
        sent.append((metrics["epoch"], metrics["trial_done"], metrics["done_reason"], checkpoint_dir))
        if metrics["epoch"] == 2:
            raise SystemExit(0)

    pruner = PrunerCallback(report=report, static={"pid": 7})
    with pytest.raises(SystemExit):
        pruner.report_lost([{"epoch": e, "val_loss": 1.0 / (e + 1)} for e in range(4)])
    assert sent == [(0, False, "", None), (1, False, "", None), (2, False, "", None)]  # none after the STOP
    assert pruner.last_epoch == 2
    with pytest.raises(SystemExit):
        pruner.report_end({"epoch": 2, "val_loss": 0.3}, "complete")
    assert sent[-1] == (2, True, "complete", None)
