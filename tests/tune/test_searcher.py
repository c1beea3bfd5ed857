"""TruthfulOptunaSearch driven directly: across a driver crash (an Optuna trial asked for after the
searcher's last save, an orphan, is adopted by the next suggestion with every parameter set), and
with each Optuna sampler."""

from __future__ import annotations

import optuna
import pytest

from tuneloop.tune.searcher import TruthfulOptunaSearch

SPACE = {"lr": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True),
         "width": optuna.distributions.CategoricalDistribution([8, 16])}


def test_an_orphan_killed_before_its_parameters_were_set_is_adopted_with_all_of_them(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = TruthfulOptunaSearch(SPACE, metric="val_loss", mode="min", study_name="s", study_url=url,
                                    sampler=optuna.samplers.RandomSampler(seed=0))
    first = searcher.suggest("a")
    searcher.save(str(tmp_path / "searcher.pkl"))
    study = optuna.load_study(study_name="s", storage=url)
    study.ask()  # the driver dies between `ask` and setting the parameters: RUNNING, no params

    restored = TruthfulOptunaSearch(SPACE, metric="val_loss", mode="min", study_name="s", study_url=url)
    restored.restore(str(tmp_path / "searcher.pkl"))
    config = restored.suggest("b")
    assert set(config) == set(SPACE) and config != first
    trials = optuna.load_study(study_name="s", storage=url).trials
    assert len(trials) == 2  # adopted, not asked again
    assert trials[1].params == config


@pytest.mark.parametrize("sampler", ["TPESampler", "CmaEsSampler", "GPSampler", "QMCSampler", "RandomSampler"])
def test_samplers(tmp_path, sampler):
    """Each Optuna sampler a sweep may name (`optuna.samplers.<name>(**rest)`) drives the truthful
    searcher: trials asked, reported epoch by epoch and told, each COMPLETE with parameters of the
    space (a full sweep adds nothing here: tests/sweep runs TPE and random search end to end)."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    space = {"optimizer_config.lr": optuna.distributions.FloatDistribution(1e-3, 0.1, log=True),
             "net_config.hidden": optuna.distributions.IntDistribution(4, 32, step=4)}
    searcher = TruthfulOptunaSearch(space, metric="val_loss", mode="min", study_name="probe", study_url=url,
                                    sampler=getattr(optuna.samplers, sampler)(seed=1))
    for number in range(3):
        trial_id = f"trial{number}"
        config = searcher.suggest(trial_id)
        losses = [1.0 / (epoch + 1) + config["optimizer_config.lr"] for epoch in range(2)]
        for epoch, loss in enumerate(losses):
            searcher.on_trial_result(trial_id, {"epoch": epoch, "val_loss": loss, "trial_done": epoch == 1})
        searcher.on_trial_complete(trial_id, {"epoch": 1, "val_loss": losses[-1], "trial_done": True})
    trials = optuna.load_study(study_name="probe", storage=url).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert all(t.params["net_config.hidden"] % 4 == 0 for t in trials)
    assert all(t.intermediate_values == {0: t.intermediate_values[0], 1: t.value} for t in trials)
