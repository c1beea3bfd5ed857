"""`tuneloop report`: the summary matches the Optuna study, the plots are real PNGs, boundary
warnings, and an unfinished sweep is said to be so."""

from __future__ import annotations

import json

import optuna
import pytest

from tl_sweeps import probe_experiment, run_sweep, study_of
from tuneloop import cli
from tuneloop.reporting.report import boundary_warnings

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def swept(tmp_path_factory, shared_ray):
    """A finished 6-trial sweep over two parameters, one trial value making the model output NaN."""
    shared_ray.up()
    tmp_path = tmp_path_factory.mktemp("report")
    experiment = probe_experiment(tmp_path, epochs=4, num_samples=6, sampler={"name": "RandomSampler", "seed": 3},
                                  search_space={
                                      "optimizer_config.lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True},
                                      "net_config.hidden": {"type": "categorical", "choices": [8, 16, 32]},
                                      "net_config.mode": {"type": "categorical", "choices": ["ok", "nan"]}})
    status, directory = run_sweep(tmp_path, experiment)
    assert status == 0
    return directory


def test_the_json_report_matches_the_study_and_the_plots_are_pngs(swept, capsys):
    assert cli.main(["report", str(swept), "--json", "--top-k", "3"]) == 0
    facts = json.loads(capsys.readouterr().out)
    study = study_of(swept)
    states = {"complete": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED,
              "failed": optuna.trial.TrialState.FAIL}
    for name, state in states.items():
        assert facts["trials"][name] == sum(t.state == state for t in study.trials)
    assert facts["n_trials"] == len(study.trials) == 6 and facts["finished"]
    assert facts["trials"]["failed"] >= 1  # the NaN trials
    complete = sorted((t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE), key=lambda t: t.value)
    assert facts["best"] == {"number": study.best_trial.number, "value": study.best_value,
                             "params": study.best_trial.params}
    assert [t["number"] for t in facts["top_k"]] == [t.number for t in complete[:3]]
    assert set(facts["importance"]) == set(study.best_trial.params)
    assert facts["importance"] == optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    names = {p.rsplit("/", 1)[-1] for p in facts["plots"]}
    assert {"learning_curves.png", "optimization_history.png", "parallel_coordinate.png", "param_importances.png",
            "slice_optimizer_config_lr.png", "slice_net_config_hidden.png", "slice_net_config_mode.png"} <= names
    for path in facts["plots"]:
        data = (swept / "report" / path.rsplit("/", 1)[-1]).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, path


def test_the_text_report_says_when_a_sweep_is_not_finished(swept, capsys):
    done = swept / "sweep_done"
    kept = done.read_text()
    done.unlink()
    try:
        assert cli.main(["report", str(swept)]) == 0
    finally:
        done.write_text(kept)
    out = capsys.readouterr().out
    assert "not finished: interrupted or still running" in out and f"tuneloop resume {swept}" in out
    assert "best: trial #" in out and "parameter importance" in out


def test_boundary_warnings_use_the_log_scale_for_log_parameters():
    distributions = {"lr": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True),
                     "width": optuna.distributions.IntDistribution(8, 512)}

    def trial(lr, width):
        return optuna.trial.create_trial(value=0.1, params={"lr": lr, "width": width}, distributions=distributions)

    assert boundary_warnings(trial(1e-2, 200)) == []
    assert boundary_warnings(trial(1.5e-4, 200)) == [  # 4% of the way on the log scale (linear: 0.005%)
        "lr=0.00015 is within 5% of its low bound (0.0001..1, log scale): widen the range"]
    assert boundary_warnings(trial(1e-2, 500)) == ["width=500 is within 5% of its high bound (8..512): widen the range"]
    assert boundary_warnings(trial(0.5, 200)) == []  # 92% on the log scale: not within 5%


def test_report_of_a_directory_that_is_not_a_sweep_exits_2(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "is not a tuneloop sweep directory" in capsys.readouterr().err
