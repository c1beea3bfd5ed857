"""TruthfulOptunaSearch across a driver crash: an Optuna trial asked for after the searcher's last
save (an orphan) is adopted by the next suggestion, with every parameter set."""

from __future__ import annotations

import optuna

from tuneloop.searcher import TruthfulOptunaSearch

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
