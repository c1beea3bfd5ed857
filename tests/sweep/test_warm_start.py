"""Conditional spaces, points to evaluate and warm starts through real sweeps: each trial in the
study holds only its own parameters, the points run first and are recorded once, and a sweep
warm-started from another holds that sweep's finished trials."""

from __future__ import annotations

import csv

import pytest

from tl_sweeps import probe_experiment, run_sweep, study_of

pytestmark = pytest.mark.usefixtures("ray_local")  # one Ray for both sweeps (and the other tests using it)

SPACE = {
    "optimizer": {"type": "categorical", "choices": ["torch.optim.AdamW", "torch.optim.SGD"],
                  "subspaces": {"torch.optim.SGD": {"optimizer_config.momentum": {"type": "float", "low": 0.5,
                                                                                  "high": 0.99}}}},
    "optimizer_config.lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True},
}
POINT = {"optimizer": "torch.optim.SGD", "optimizer_config.momentum": 0.9, "optimizer_config.lr": 0.05}


def test_a_conditional_sweep_with_a_point_then_a_warm_started_one(tmp_path, capsys):
    first = probe_experiment(tmp_path, epochs=2, num_samples=4, search_space=SPACE,
                             sampler={"name": "RandomSampler", "seed": 3}, points_to_evaluate=[POINT])
    status, directory = run_sweep(tmp_path, first)
    assert status == 0
    study = study_of(directory)
    assert len(study.trials) == 4
    for trial in study.trials:
        sgd = trial.params["optimizer"] == "torch.optim.SGD"
        assert set(trial.params) == {"optimizer", "optimizer_config.lr"} | ({"optimizer_config.momentum"} if sgd else set())
    assert study.trials[0].params == POINT  # asked for first
    assert [t.params for t in study.trials if t.params == POINT] == [POINT]  # run, and recorded, once
    with open(directory / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert sum(row["optimizer_config.momentum"] == "0.9" and row["optimizer_config.lr"] == "0.05" for row in rows) == 1
    assert all((row["optimizer_config.momentum"] == "") == (row["optimizer"] == "torch.optim.AdamW") for row in rows)

    (tmp_path / "second").mkdir()
    second = probe_experiment(tmp_path / "second", epochs=2, num_samples=2, search_space=SPACE,
                              sampler={"name": "TPESampler", "seed": 0, "n_startup_trials": 1},
                              warm_start_from=str(directory))
    capsys.readouterr()
    status, second_dir = run_sweep(tmp_path / "second", second)
    assert status == 0
    assert "[tuneloop] warm start: 4 finished trial(s)" in capsys.readouterr().out
    seeded = study_of(second_dir)
    earlier = {(t.state, t.value, tuple(sorted(t.params.items()))) for t in study.trials}
    warm = [t for t in seeded.trials if "warm_start_from" in t.user_attrs]
    assert {(t.state, t.value, tuple(sorted(t.params.items()))) for t in warm} == earlier
    assert all(t.intermediate_values for t in warm)
    assert len(seeded.trials) == 4 + 2  # the earlier four and its own two
    with open(second_dir / "results.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 2  # Tune ran only its own trials
