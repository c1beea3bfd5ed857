"""WandbLoggingCallback with the real wandb in offline mode: what a training logged is read back
from the run's offline file (`wandb_records`) and compared with what the trainer computed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tuneloop.callbacks import (EarlyStoppingCallback, GradientMonitorCallback, LossPredictionCallback,
                                OverfitDetectionCallback, PrunerCallback, TrainingCallback,
                                WandbLoggingCallback)
from tl_testing import digits_trainer

import wandb_records
from wandb_records import config, history, run_file, run_files, run_record, summary, wait_finished

QUIET = {
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "WANDB_CONSOLE": "off",  # no stdout/stderr wrapping (capsys sees our own prints)
    "WANDB_DISABLE_GIT": "true",
    "WANDB_DISABLE_CODE": "true",
    "WANDB_ERROR_REPORTING": "false",  # no Sentry
    "WANDB__DISABLE_STATS": "true",  # no system metrics sampler
    "WANDB__DISABLE_META": "true",
    "WANDB__DISABLE_MACHINE_INFO": "true",
    "WANDB__SAVE_REQUIREMENTS": "false",
}


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Offline, silent W&B writing under tmp_path/wandb.

    wandb reads its environment once per process (at its first `init`), so it is torn down before
    the test (to read this one) and after it (so no later test inherits a deleted directory).
    """
    import wandb

    wandb.teardown()
    for key, value in {**QUIET, "WANDB_DIR": str(tmp_path)}.items():
        monkeypatch.setenv(key, value)
    yield tmp_path
    if wandb.run is not None:
        wandb.run.finish()
    wandb.teardown()


class Seen(TrainingCallback):
    """Records, after every other callback (99), what the trainer and the producers computed."""

    priority = 99

    def __init__(self):
        self.epochs = []

    def on_epoch_end(self, trainer, *, epoch, train_loss, val_loss, metrics, **kwargs):
        self.epochs.append({
            "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "metrics": dict(metrics),
            "lr": trainer.optimizer.param_groups[0]["lr"], "max_grad_norm": trainer._max_grad_norm,
            "loss_prediction": trainer._loss_prediction, "overfit_gap_ratio": trainer._overfit_gap_ratio,
        })

    def expected_rows(self) -> list[dict]:
        """The row W&B should hold for each epoch, built from the raw values (not epoch_record)."""
        rows = []
        for seen in self.epochs:
            row = {"epoch": seen["epoch"], "train_loss": seen["train_loss"], "val_loss": seen["val_loss"],
                   "lr": seen["lr"], **seen["metrics"]}
            if seen["max_grad_norm"] is not None:
                row["max_grad_norm"] = seen["max_grad_norm"]
            if seen["overfit_gap_ratio"] is not None:
                row["overfit_gap_ratio"] = seen["overfit_gap_ratio"]
            if seen["loss_prediction"] is not None:
                row["predicted_final_loss"] = 10.0 ** -seen["loss_prediction"]
            rows.append(row)
        return rows


def test_one_row_per_epoch_with_the_values_the_trainer_computed(offline, digits, capsys):
    epochs = 12
    seen = Seen()
    wb = WandbLoggingCallback(project="tuneloop-test", config={"lr": 0.05})
    trainer, train, val = digits_trainer(digits, [
        GradientMonitorCallback(), LossPredictionCallback(epochs), OverfitDetectionCallback(0, 1), wb, seen])
    trainer.train(train, val, epochs)
    assert wb.run is None
    path = run_file(offline)
    assert wait_finished(path) == 0
    rows = history(path)

    assert len(rows) == epochs  # exactly one log per epoch
    assert rows == seen.expected_rows()  # exact: the floats survive W&B's JSON unchanged
    assert [r["epoch"] for r in rows] == list(range(epochs))
    for row in rows:
        assert {"train_loss", "val_loss", "lr", "val_accuracy", "max_grad_norm"} <= set(row)
        assert 0.0 <= row["val_accuracy"] <= 1.0 and row["max_grad_norm"] > 0
    assert [r["lr"] for r in rows] == pytest.approx([0.05 * 0.5 ** (e // 4) for e in range(epochs)])
    assert rows[-1]["val_accuracy"] > 0.8  # it really trained
    gaps = [r["epoch"] for r in rows if "overfit_gap_ratio" in r]  # only on the epochs it fired
    assert gaps and gaps == [s["epoch"] for s in seen.epochs if s["overfit_gap_ratio"] is not None]

    # predicted_final_loss: none for the first 10 epochs, then in LOSS units (not -log10):
    # the exponential fit of the val losses so far, extrapolated to the last epoch
    assert all("predicted_final_loss" not in row for row in rows[:10])
    for e in (10, 11):
        val_losses = [r["val_loss"] for r in rows[:e + 1]]
        slope, intercept = np.polyfit(np.arange(e + 1), np.log(val_losses), 1)
        assert rows[e]["predicted_final_loss"] == pytest.approx(math.exp(intercept + slope * (epochs - 1)), rel=1e-9)
        assert 0 < rows[e]["predicted_final_loss"] < 10  # a loss, not -log10 of one

    assert config(path)["lr"] == 0.05
    assert summary(path)["stop_reason"] == "complete"
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[wandb]")]
    assert len(lines) == 1 and lines[0].startswith("[wandb] epoch 9: ")  # every 10 epochs
    assert f"val_loss={rows[9]['val_loss']:.4g}" in lines[0] and f"lr={rows[9]['lr']:.4g}" in lines[0]


class Producer(TrainingCallback):
    """Writes fixed values into the shared attributes, as the built-in producers would."""

    priority = 70

    def on_epoch_end(self, trainer, *, epoch, **kwargs):
        trainer._max_grad_norm = 3.5
        trainer._loss_prediction = 2.0 if epoch else None  # -log10(0.01)
        trainer._overfit_gap_ratio = 1.25 if epoch else None


def test_shared_attributes_are_logged_when_present_and_the_summary_every_ten_epochs(offline, digits, capsys):
    trainer, train, val = digits_trainer(digits, [Producer(), WandbLoggingCallback(project="t")])
    trainer.train(train, val, 20)
    path = run_file(offline)
    assert wait_finished(path) == 0
    rows = history(path)
    assert len(rows) == 20
    assert "overfit_gap_ratio" not in rows[0] and "predicted_final_loss" not in rows[0]
    assert rows[0]["max_grad_norm"] == 3.5
    assert rows[1]["predicted_final_loss"] == pytest.approx(0.01) and rows[1]["overfit_gap_ratio"] == 1.25
    out = capsys.readouterr().out
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("[wandb]")] == [
        "[wandb] epoch 9", "[wandb] epoch 19"]
    assert "overfit_gap_ratio=1.25 predicted_final_loss=0.01\n" in out


def test_init_arguments_name_the_trial_run(offline, digits):
    wb = WandbLoggingCallback(project="sweeps", group="digits_mlp", id="trial_0007", name="trial_7",
                              config={"optimizer_config.lr": 0.01, "experiment": "digits_mlp"})
    assert wb.init_kwargs["resume"] == "allow"
    trainer, train, val = digits_trainer(digits, [wb])
    trainer.train(train, val, 2)
    path = run_file(offline)
    assert path.name == "run-trial_0007.wandb"
    assert wait_finished(path) == 0
    run = run_record(path)
    assert (run.run_id, run.project, run.run_group, run.display_name) == (
        "trial_0007", "sweeps", "digits_mlp", "trial_7")
    assert config(path) == {"optimizer_config.lr": 0.01, "experiment": "digits_mlp"}


def test_summary_entries_land_in_the_summary_record(offline, digits):
    wb = WandbLoggingCallback(project="t")
    trainer, train, val = digits_trainer(digits, [EarlyStoppingCallback(patience=1, min_delta=10.0), wb])
    wb.summary.update({"best_val_loss": 0.125, "best_epoch": 0, "note": "final"})
    trainer.train(train, val, 6)
    path = run_file(offline)
    assert wait_finished(path) == 0
    assert len(history(path)) == 2  # stopped by its own early stopping after epoch 1
    got = summary(path)
    assert {k: got[k] for k in ("best_val_loss", "best_epoch", "note", "stop_reason")} == {
        "best_val_loss": 0.125, "best_epoch": 0, "note": "final", "stop_reason": "early_stopping"}


class Boom(TrainingCallback):
    priority = 50  # before W&B (80): the failing epoch is never logged

    def __init__(self, at):
        self.at = at

    def on_epoch_end(self, trainer, *, epoch, **kwargs):
        if epoch == self.at:
            raise RuntimeError("boom")


def test_the_run_is_finished_as_failed_when_training_raises(offline, digits):
    import wandb

    wb = WandbLoggingCallback(project="t")
    wb.summary["note"] = "kept"
    trainer, train, val = digits_trainer(digits, [wb, Boom(at=1)])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train(train, val, 4)
    assert wb.run is None and wandb.run is None
    path = run_file(offline)
    assert wait_finished(path) == 1  # W&B shows the run as failed
    assert len(history(path)) == 1
    assert summary(path)["note"] == "kept" and summary(path)["stop_reason"] == "error: RuntimeError"


def test_a_pruned_trial_is_marked_and_finished(offline, digits):
    def report(metrics, checkpoint):
        if metrics["epoch"] == 1:
            raise SystemExit(0)  # what tune.report raises when a scheduler stops the trial

    wb = WandbLoggingCallback(project="t")
    trainer, train, val = digits_trainer(digits, [wb, PrunerCallback(report=report)])
    with pytest.raises(SystemExit):
        trainer.train(train, val, 5)
    path = run_file(offline)
    assert wait_finished(path) == 0
    assert [r["epoch"] for r in history(path)] == [0, 1]  # W&B (80) logs before the report (100)
    assert summary(path)["stop_reason"] == "pruned"


def test_an_error_handled_around_train_is_not_blamed_on_training(offline, digits):
    wb = WandbLoggingCallback(project="t")
    trainer, train, val = digits_trainer(digits, [wb])
    try:
        raise KeyError("an earlier, handled failure")
    except KeyError:
        trainer.train(train, val, 1)  # e.g. a retry inside an except block
    path = run_file(offline)
    assert wait_finished(path) == 0 and summary(path)["stop_reason"] == "complete"


def test_an_active_run_is_reused_and_left_open(offline, digits):
    import wandb

    run = wandb.init(project="outer")
    wb = WandbLoggingCallback(project="ignored")
    wb.summary["inner"] = 1
    trainer, train, val = digits_trainer(digits, [wb])
    trainer.train(train, val, 2)
    assert wandb.run is run  # not finished by the callback
    path = run_file(offline)  # no second run was started
    assert wandb_records.exit_codes(path) == []
    run.log({"after": 1})
    run.finish()
    assert wait_finished(path) == 0
    rows = history(path)
    assert [sorted(r) for r in rows[:2]] == [["epoch", "lr", "train_loss", "val_accuracy", "val_loss"]] * 2
    assert rows[2:] == [{"after": 1}]
    assert run_record(path).project == "outer" and summary(path)["inner"] == 1


def test_two_trainings_make_two_runs(offline, digits):
    wb = WandbLoggingCallback(project="t")
    for _ in range(2):
        trainer, train, val = digits_trainer(digits, [wb])
        trainer.train(train, val, 1)
    files = run_files(offline, expect=2)
    assert len(files) == 2 and all(wait_finished(f) == 0 and len(history(f)) == 1 for f in files)


def test_the_reader_joins_fragments_and_rejects_damage(offline, tmp_path):
    """Checks of `wandb_records` itself on a real file: a summary value larger than a 32 KiB block
    is split into FIRST/MIDDLE/LAST records; a flipped byte fails its checksum."""
    import wandb

    big = "x" * 100_000
    run = wandb.init(project="t")
    run.log({"a": 1.5})
    run.summary["big"] = big
    run.finish()
    path = run_file(offline)
    assert wait_finished(path) == 0
    data = path.read_bytes()
    assert len(data) > 3 * wandb_records.BLOCK
    types = [kind for _, kind, _ in wandb_records.chunks(path)]
    first = types.index(wandb_records.FIRST)  # the big value really was split across blocks
    assert types[first + 1:first + 3] == [wandb_records.MIDDLE, wandb_records.MIDDLE]
    assert wandb_records.LAST in types[first + 3:]
    assert summary(path)["big"] == big and history(path) == [{"a": 1.5}]

    damaged = tmp_path / "damaged.wandb"
    at = data.index(b"x" * 64) + 10
    damaged.write_bytes(data[:at] + b"y" + data[at + 1:])
    with pytest.raises(wandb_records.CorruptRunFile, match="checksum"):
        wandb_records.records(damaged)
    (tmp_path / "bad-header.wandb").write_bytes(b":W&X" + data[4:])
    with pytest.raises(wandb_records.CorruptRunFile, match="header"):
        wandb_records.records(tmp_path / "bad-header.wandb")
