"""`tuneloop sweep` on a real local Ray (2 CPUs) with a real Optuna SQLite study."""

from __future__ import annotations

import json
import shutil

import optuna
import pytest
import yaml

from tl_sweeps import probe_experiment, run_sweep, study_of, trial_rows
from tuneloop import cli
from tuneloop.checkpoints import load_state

pytestmark = pytest.mark.usefixtures("ray_local")


def test_study_states_complete_and_failed(tmp_path, capsys):
    experiment = probe_experiment(
        tmp_path, num_samples=3,
        sampler={"name": "GridSampler", "seed": 0, "search_space": {"net_config.mode": ["ok", "nan", "raise"]}},
        search_space={"net_config.mode": {"type": "categorical", "choices": ["ok", "nan", "raise"]}})
    status, directory = run_sweep(tmp_path, experiment)
    out = capsys.readouterr().out
    assert status == 0
    trials = study_of(directory).trials
    assert len(trials) == 3
    by_mode = {t.params["net_config.mode"]: t for t in trials}
    assert by_mode["ok"].state == optuna.trial.TrialState.COMPLETE
    assert by_mode["nan"].state == optuna.trial.TrialState.FAIL
    assert by_mode["raise"].state == optuna.trial.TrialState.FAIL
    ok_rows = next(r for r in trial_rows(directory).values() if r and r[0]["config"]["net_config.mode"] == "ok")
    assert [r["epoch"] for r in ok_rows] == [0, 1, 2, 3]
    assert by_mode["ok"].value == ok_rows[-1]["val_loss"]
    assert by_mode["ok"].intermediate_values == {r["epoch"]: r["val_loss"] for r in ok_rows}
    nan_rows = next(r for r in trial_rows(directory).values() if r and r[0]["config"]["net_config.mode"] == "nan")
    assert len(nan_rows) == 1 and nan_rows[0]["done_reason"] == "non_finite_loss"  # stopped after one epoch
    errors = list(directory.glob("trial_*/error.txt"))
    assert len(errors) == 1 and "forward failed on purpose" in errors[0].read_text()
    assert "1 complete, 0 pruned, 2 failed" in out
    # best.yaml is a complete experiment file that `tuneloop train` runs as is
    best = yaml.safe_load((directory / "best.yaml").read_text())
    assert best["run"]["net_config"]["mode"] == "ok"
    assert cli.main(["train", str(directory / "best.yaml"), "--set", "run.epochs=1",
                     "--output", str(tmp_path / "best_run")]) == 0
    # a second sweep into the same directory is refused before anything runs
    assert run_sweep(tmp_path, experiment)[0] == 2
    assert "tuneloop resume" in capsys.readouterr().err


@pytest.mark.parametrize("metric, mode", [("val_loss", "min"), ("val_accuracy", "max")])
def test_scheduler_stopped_trials_are_pruned_with_their_values(tmp_path, metric, mode):
    experiment = probe_experiment(
        tmp_path, num_samples=6, max_concurrent_trials=1, metric=metric, mode=mode,
        scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 2},
        sampler={"name": "RandomSampler", "seed": 6},  # lr sequence: good, good, bad, good, bad, bad
        search_space={"optimizer_config.lr": {"type": "categorical", "choices": [0.05, 0.00001]}})
    experiment["run"]["callbacks"] = [{"class": "tl_testing.MarkerCallback", "directory": str(tmp_path / "ends")}]
    status, directory = run_sweep(tmp_path, experiment)
    assert status == 0
    trials = study_of(directory).trials
    assert len(trials) == 6
    ends = [json.loads(p.read_text()) for p in (tmp_path / "ends").glob("*.json")]
    assert len(ends) == 6  # on_train_end fired in every trial, pruned ones (SystemExit) included
    assert any(len(e["epochs"]) < 4 for e in ends)
    states = [t.state for t in trials]
    assert optuna.trial.TrialState.RUNNING not in states
    assert optuna.trial.TrialState.PRUNED in states and optuna.trial.TrialState.COMPLETE in states
    rows_by_lr = {}
    for rows in trial_rows(directory).values():
        rows_by_lr.setdefault(rows[0]["config"]["optimizer_config.lr"], []).append(rows)
    for trial in trials:
        steps = sorted(trial.intermediate_values)
        assert steps == list(range(len(steps))) and steps, trial
        candidates = rows_by_lr[trial.params["optimizer_config.lr"]]
        rows = next(r for r in candidates if [x[metric] for x in r] == [trial.intermediate_values[s] for s in steps])
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert len(rows) == 4 and trial.value == rows[-1][metric] and rows[-1]["trial_done"]
        else:
            assert len(rows) < 4 and not rows[-1]["trial_done"]  # the final epoch's value is recorded too


@pytest.mark.parametrize("scheduler", [
    {"name": "asha", "grace_period": 1, "reduction_factor": 2},
    {"name": "hyperband", "reduction_factor": 2},
    {"name": "median", "grace_period": 1, "min_samples_required": 1},
    {"name": "pbt", "perturbation_interval": 2, "quantile_fraction": 0.5, "synch": True},
    {"name": "pfl", "k": 1, "n_startup_trials": 1, "n_warmup_epochs": 1},
], ids=lambda s: s["name"])
def test_each_scheduler_runs_a_sweep(tmp_path, scheduler):
    population = scheduler["name"] == "pbt"  # PBT exploits among trials that run together: two, at once
    samples = 2 if population else 4
    # HyperBand pauses a trial at each rung until its bracket's other trials get there: two run at once
    slots = {"pbt": 2, "hyperband": 2}.get(scheduler["name"], 1)
    experiment = probe_experiment(tmp_path, epochs=6, scheduler=scheduler, num_samples=samples,
                                  max_concurrent_trials=slots,
                                  search_space={"optimizer_config.lr": {"type": "float", "low": 1e-4, "high": 0.1,
                                                                        "log": True}})
    status, directory = run_sweep(tmp_path, experiment)
    assert status == 0
    trials = study_of(directory).trials
    assert len(trials) == samples
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in trials)
    assert any(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    rows = trial_rows(directory)
    assert len(rows) == samples
    for trial_rows_ in rows.values():
        for before, after in zip(trial_rows_, trial_rows_[1:]):
            exploited = scheduler["name"] == "pbt" and before["config"] != after["config"]
            # contiguous, never repeated — except where PBT cloned another trial's checkpoint
            assert after["epoch"] == before["epoch"] + 1 or exploited, [r["epoch"] for r in trial_rows_]
    assert (directory / "best.yaml").exists() and (directory / "results.csv").exists()
    for trial_dir in directory.glob("trial_*") if not population else ():  # PBT swaps checkpoints
        # keep_last_k (3) and the best, once the trial finished
        kept = sorted(int(p.name.split("_")[-1]) for p in trial_dir.glob("checkpoint_*"))
        saved = [r for r in rows[trial_dir.name] if r.get("checkpoint_dir_name")]
        best = min(saved, key=lambda r: r["val_loss"])["checkpoint_dir_name"] if saved else None
        expected = {r["checkpoint_dir_name"] for r in saved[-3:]} | ({best} if best else set())
        assert {f"checkpoint_{i:06d}" for i in kept} == expected
        for row in saved:  # each holds the state of the epoch reported with it (written in the background)
            if row["checkpoint_dir_name"] in expected:
                assert load_state(trial_dir / row["checkpoint_dir_name"])["epoch"] == row["epoch"]
    if scheduler["name"] == "pbt":
        mutated = [r for r in rows.values() if len({x["config"]["optimizer_config.lr"] for x in r}) > 1]
        assert mutated, "PBT exploited no checkpoint"
    if scheduler["name"] == "pfl":
        state = json.loads((directory / "pfl_state.json").read_text())
        assert len(state["finals"]) >= 1


def test_user_callback_and_fresh_state_with_reused_actors(tmp_path):
    markers = tmp_path / "markers"
    experiment = probe_experiment(
        tmp_path, num_samples=3, max_concurrent_trials=1,
        search_space={"optimizer_config.weight_decay": {"type": "categorical", "choices": [0.0, 0.5]}})
    experiment["run"]["callbacks"] = [{"class": "tl_testing.MarkerCallback", "directory": str(markers)}]
    status, directory = run_sweep(tmp_path, experiment)
    assert status == 0
    seen = [json.loads(p.read_text()) for p in markers.glob("*.json")]
    assert len(seen) == 3 and all(s["epochs"] == [0, 1, 2, 3] for s in seen)
    assert len({s["pid"] for s in seen}) == 1  # one actor ran all three trials
    rows = trial_rows(directory)
    first_losses = {}
    for trial_rows_ in rows.values():
        first_losses.setdefault(trial_rows_[0]["config"]["optimizer_config.weight_decay"], set()).add(
            trial_rows_[0]["train_loss"])
    # identical configs give identical first epochs: nothing leaks from the previous trial
    assert all(len(losses) == 1 for losses in first_losses.values())
    assert len({r[0]["pid"] for r in rows.values()}) == 1


def test_a_callbacks_argument_is_swept_and_reaches_the_callback_in_each_trial(tmp_path):
    experiment = probe_experiment(tmp_path, num_samples=3, epochs=2,
                                  search_space={"callbacks.0.knob": {"type": "float", "low": 1.0, "high": 2.0}})
    experiment["run"]["callbacks"] = [{"class": "tl_testing.KnobCallback", "knob": 0.0}]
    status, directory = run_sweep(tmp_path, experiment)
    assert status == 0
    rows = trial_rows(directory)
    assert len(rows) == 3
    for trial_rows_ in rows.values():
        swept = trial_rows_[0]["config"]["callbacks.0.knob"]
        assert 1.0 <= swept <= 2.0
        assert [row["knob"] for row in trial_rows_] == [swept, swept]
    study = study_of(directory)
    assert sorted(t.params["callbacks.0.knob"] for t in study.trials) == sorted(
        r[0]["config"]["callbacks.0.knob"] for r in rows.values())


def test_optuna_storage_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    experiment = probe_experiment(tmp_path, epochs=2, num_samples=2, optuna_storage=url)
    status, directory = run_sweep(tmp_path, experiment)
    assert status == 0
    assert not (directory / "optuna.db").exists()
    study = optuna.load_study(study_name="probe", storage=url)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2


def test_sweep_where_every_trial_fails_exits_1(tmp_path, capsys):
    experiment = probe_experiment(tmp_path, num_samples=2)
    # every trial's model raises (the file's own config is fine: `tuneloop sweep`'s one-batch preflight
    # would refuse a model that raises on it before Ray starts, see test_bad_input.py)
    experiment["sweep"]["search_space"]["net_config.mode"] = {"type": "categorical", "choices": ["raise"]}
    status, directory = run_sweep(tmp_path, experiment)
    out = capsys.readouterr().out
    assert status == 1
    assert "error: all 2 trials failed" in out
    assert all(t.state == optuna.trial.TrialState.FAIL for t in study_of(directory).trials)
    assert len(list(directory.glob("trial_*/error.txt"))) == 2


def test_overwrite_starts_over_and_never_merges_into_an_old_study(tmp_path, capsys):
    """An existing experiment directory and an old study of the same name in `sweep.optuna_storage`:
    refused (pointing to `tuneloop resume`) without --overwrite; with it, both start over."""
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    old = optuna.create_study(study_name="probe", storage=url)
    old.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=123.0))
    stale = tmp_path / "results" / "probe" / "trial_old"
    stale.mkdir(parents=True)
    (stale / "result.json").write_text("{}\n")
    experiment = probe_experiment(tmp_path, epochs=2, num_samples=2, optuna_storage=url)
    assert run_sweep(tmp_path, experiment)[0] == 2
    err = capsys.readouterr().err
    assert "tuneloop resume" in err and "--overwrite" in err and stale.exists()
    shutil.rmtree(stale.parent)
    assert run_sweep(tmp_path, experiment)[0] == 2  # the directory is new, the study is not
    assert "sweep.optuna_storage: already holds a study named 'probe'" in capsys.readouterr().err
    status, directory = run_sweep(tmp_path, experiment, "--overwrite")
    assert status == 0
    trials = optuna.load_study(study_name="probe", storage=url).trials
    assert len(trials) == 2 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert 123.0 not in [t.value for t in trials]


def test_every_view_of_a_sweep_agrees_on_states_and_the_best_with_a_metric_to_maximize(tmp_path, capsys):
    """metric: val_confidence, mode: max. The Optuna study, results.csv, best.yaml, the live table
    and `tuneloop report` decide each trial's state on the sweep's metric (a NaN metric with a
    finite val_loss is a failed trial everywhere) and the best trial by one rule."""
    import csv

    experiment = probe_experiment(
        tmp_path, epochs=4, num_samples=6, metric="val_confidence", mode="max",
        scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 2},
        sampler={"name": "RandomSampler", "seed": 3},
        search_space={"optimizer_config.lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True},
                      "net_config.classes": {"type": "categorical", "choices": [3, 4]}})
    experiment["run"]["metrics"] = ["tl_testing.confidence"]
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(experiment))
    assert cli.main(["sweep", str(path)]) == 0  # not --quiet: the live table's last block is printed
    out = capsys.readouterr().out
    directory = tmp_path / "results" / "probe"

    study = study_of(directory)
    names = {optuna.trial.TrialState.COMPLETE: "complete", optuna.trial.TrialState.PRUNED: "pruned",
             optuna.trial.TrialState.FAIL: "failed"}
    study_state = {t.params["optimizer_config.lr"]: names[t.state] for t in study.trials}
    with open(directory / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    table_state = {float(r["optimizer_config.lr"]): r["state"] for r in rows}
    assert table_state == study_state and len(study_state) == 6
    assert {r["state"] for r in rows if r["net_config.classes"] == "4"} == {"failed"}  # NaN metric, finite loss
    assert "failed" in table_state.values() and "complete" in table_state.values()

    best = study.best_trial  # Optuna: the best COMPLETE trial, by direction maximize
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    best_row = max((r for r in rows if r["state"] == "complete"), key=lambda r: float(r["val_confidence"]))
    assert float(best_row["optimizer_config.lr"]) == best.params["optimizer_config.lr"]
    assert float(best_row["val_confidence"]) == best.value
    best_yaml = (directory / "best.yaml").read_text()
    assert best_yaml.startswith(f"# Best trial {best_row['trial_id']} of sweep probe: val_confidence=")
    assert yaml.safe_load(best_yaml)["run"]["optimizer_config"]["lr"] == best.params["optimizer_config.lr"]
    assert f"best: trial {best_row['trial_id']} val_confidence={best.value:.6g}" in out  # the summary table
    live = [line for line in out.splitlines() if line.startswith("best val_confidence ")]
    assert live and live[-1] == f"best val_confidence {best.value:.4g} (trial_{best_row['trial_id']})"

    assert cli.main(["report", str(directory), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["best"]["number"] == best.number and facts["best"]["value"] == best.value
    assert facts["trials"]["failed"] == list(study_state.values()).count("failed")
    assert [t["value"] for t in facts["top_k"]] == sorted(
        (t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE), reverse=True)[:5]
