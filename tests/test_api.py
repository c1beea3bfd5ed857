"""The Python API (`tuneloop.sweep`, `resume`, `train`, `load_experiment`): a real sweep from a
dict, its results read back, the best configuration trained, and notebook code refused up front."""

from __future__ import annotations

import csv
import math

import pytest

import tuneloop
from tl_sweeps import probe_experiment
from tl_testing import Probe, blobs


@pytest.mark.usefixtures("ray_local")
def test_a_sweep_from_a_dict_returns_its_results_and_the_best_trains(tmp_path):
    experiment = probe_experiment(tmp_path, epochs=3, num_samples=3)
    experiment["run"]["net"] = Probe  # a class itself, from an importable module
    experiment["run"]["data"] = blobs
    result = tuneloop.sweep(experiment, ["sweep.num_samples=4"], quiet=True)  # overrides, as --set takes them

    assert result.status == 0 and result.path == tmp_path / "results" / "probe"
    trials = result.trials
    assert len(trials) == 4 and set(trials["state"]) == {"complete"}
    for column in ("last_val_loss", "last_train_loss", "last_val_accuracy", "val_accuracy_at_best",
                   "val_loss_at_best", "optimizer_config.lr"):
        assert column in trials.columns, column
    assert trials["last_val_loss"].equals(trials["val_loss"])  # the sweep metric's last value, twice
    best = trials.loc[trials["val_loss"].idxmin()]
    assert result.best_value == pytest.approx(best["val_loss"])
    assert result.best_config == {"optimizer_config.lr": pytest.approx(best["optimizer_config.lr"])}
    assert result.best_trial_dir.endswith(f"trial_{best['trial_id']}")
    assert len(result.study.trials) == 4 and result.study.best_value == pytest.approx(result.best_value)
    with open(result.path / "results.csv") as handle:  # the same columns in the file
        assert set(csv.DictReader(handle).fieldnames) == set(trials.columns)
    assert 0.0 <= best["val_accuracy_at_best"] <= 1.0 and math.isfinite(best["last_val_accuracy"])

    again = tuneloop.resume(result.path)  # a finished sweep: nothing to resume, the same results
    assert again.status == 0 and again.best_value == result.best_value

    trained = tuneloop.train(result.best_experiment, ["run.epochs=2"], output=tmp_path / "best_run",
                             device="cpu", progress=False)
    assert trained.epochs_trained == 2 and (tmp_path / "best_run" / "metrics.csv").is_file()


def make_data():
    return blobs()


def test_notebook_code_is_refused_before_anything_runs(tmp_path):
    experiment = probe_experiment(tmp_path)
    experiment["run"]["data"] = "__main__.make_data"
    with pytest.raises(tuneloop.UserError, match=r"<experiment dict>: run.data: must be importable by Ray's "
                                                 r"workers, which cannot import __main__"):
        tuneloop.sweep(experiment, quiet=True)
    assert not (tmp_path / "results").exists()

    def local_model():
        pass

    experiment["run"]["data"] = local_model
    with pytest.raises(tuneloop.UserError, match="run.data: must be an import path, or a class or function "
                                                 "defined at the top of a module"):
        tuneloop.load_experiment(experiment)


def test_load_experiment_takes_a_path_a_dict_and_overrides(tmp_path):
    from pathlib import Path

    digits = Path(__file__).resolve().parents[1] / "experiments" / "digits_mlp.yaml"
    cfg = tuneloop.load_experiment(digits, ["run.epochs=3"])
    assert cfg.run.epochs == 3 and cfg.run.net == "tuneloop.recipes.digits.MLP"
    experiment = cfg.model_dump(mode="json", by_alias=True)
    assert tuneloop.load_experiment(experiment, ["sweep.num_samples=2"]).sweep.num_samples == 2
    assert tuneloop.load_experiment(cfg) is cfg
    with pytest.raises(tuneloop.UserError, match=r"<experiment dict>: run.epochs: must be > 0, but got 0"):
        tuneloop.load_experiment(experiment, ["run.epochs=0"])
