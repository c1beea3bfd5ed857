"""`tuneloop resume`: a sweep whose driver is interrupted (SIGINT, SIGKILL) at a random point and
resumed finishes with every trial's epochs exactly once, no config proposed twice, no epoch trained
more than needed, and an Optuna study with exactly the sweep's trials (modelled on Ray's
test_experiment_restore)."""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import signal
import time
from pathlib import Path

import optuna
import pytest
import yaml

from tl_ray import ray_processes_after
from tl_sweeps import (damage_searcher_state, epochs_logged, interrupt_after, interruptible_experiment, launch,
                       launch_until_gated, probe_experiment, restored_epochs, resume_here, rework_allowed)

TRIALS, EPOCHS = 6, 8


# SIGINT then SIGKILL with Tune's state damaged on purpose: a Ctrl-C and its resume, then a killed
# resume and a resume that repairs the state. (A SIGKILL alone: three of them in tests/sweep/test_faults.py;
# a SIGINT alone: the moved-directory and S3 tests below and in test_storage.py.)
@pytest.mark.parametrize("signals, damage", [([signal.SIGINT, signal.SIGKILL], True)],
                         ids=["sigint-then-sigkill-with-damaged-state"])
@pytest.mark.slow
def test_interrupted_sweep_resumes_without_loss(tmp_path, ray_tmp, signals, damage):
    path, directory, log = interruptible_experiment(tmp_path, TRIALS, EPOCHS)
    rng = random.Random(len(signals))

    commands = [["sweep", str(path), "--quiet"]] + [["resume", str(directory)]] * len(signals)
    allowed = 0  # epochs the resumes may train again (see rework_allowed)
    for step, command in enumerate(commands):
        process = launch(command, ray_tmp, tmp_path)
        if step < len(signals):
            target = epochs_logged(log) + rng.randint(3, 12)  # a random point of the run
            deadline = time.monotonic() + 300
            while epochs_logged(log) < target and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert epochs_logged(log) >= target, "the sweep did not reach the point to interrupt it at"
            os.kill(process.pid, signals[step])
        output, _ = process.communicate(timeout=240)
        if step < len(signals):  # every trial has stopped training once its Ray is gone
            assert not ray_processes_after(ray_tmp), "Ray processes outlived the interrupted driver"
            if damage and signals[step] == signal.SIGKILL:
                damage_searcher_state(directory)
            allowed += rework_allowed(log, restored_epochs(directory))
        if damage and step == len(signals):
            # which files a kill truncates is chance, and so is their order in the list: the one
            # damaged on purpose must be among them
            said = [line for line in output.splitlines() if "Tune's experiment state was damaged (" in line]
            assert said, output
            damaged = said[0].split("damaged (", 1)[1].split(";", 1)[0].split(", ")
            assert any(name.startswith("searcher-state-") for name in damaged), said[0]
        if step == len(commands) - 1:
            assert process.returncode == 0, output

    # every trial has all its epochs exactly once, in order
    histories = {}
    for result in sorted(directory.glob("trial_*/result.json")):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        epochs = [r["epoch"] for r in rows]
        assert epochs == list(range(len(epochs))), (result, epochs)
        histories[result.parent.name] = rows
    assert len(histories) == TRIALS
    # the Optuna study has exactly the sweep's trials: none RUNNING, none twice
    study = optuna.load_study(study_name="probe", storage=f"sqlite:///{directory / 'optuna.db'}")
    assert len(study.trials) == TRIALS
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in study.trials)
    lrs = [t.params["optimizer_config.lr"] for t in study.trials]
    assert len(set(lrs)) == TRIALS  # the searcher proposed each config once
    for trial in study.trials:  # each study trial matches one Tune trial's history
        told = [trial.intermediate_values[e] for e in sorted(trial.intermediate_values)]
        matches = [rows for rows in histories.values()
                   if [r["val_loss"] for r in rows][:len(told)] == told[:len(rows)]]
        assert len(matches) == 1, trial
        rows = matches[0]
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert len(rows) == len(told) == EPOCHS and trial.value == rows[-1]["val_loss"]
        else:  # pruned (perhaps around a kill): the study and Tune agree on the epochs both hold (above);
            # how many more one of them holds depends on how far Tune's state lagged at the kill
            assert rows and told and not rows[-1]["trial_done"]
    # no more epochs trained than needed: each interrupted trial continues from the checkpoint the
    # restored state names (a checkpoint every epoch here), so it retrains only what that state missed
    needed = sum(len(rows) for rows in histories.values())
    assert epochs_logged(log) <= needed + allowed
    assert (directory / "sweep_done").exists()
    finished = launch(["resume", str(directory)], ray_tmp, tmp_path)
    output, _ = finished.communicate(timeout=120)
    assert finished.returncode == 0 and "already finished" in output


def test_resume_of_a_directory_that_is_not_a_sweep(tmp_path, capsys):
    from tuneloop import cli

    (tmp_path / "notes.txt").write_text("hello")
    assert cli.main(["resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is not a tuneloop sweep directory" in err and str(tmp_path) in err


@pytest.mark.slow
def test_a_moved_experiment_directory_resumes_where_it_now_is(tmp_path, ray_tmp, shared_ray, capsys):
    """The searcher, the ASHA state and the study are found in the directory resumed, not where
    Tune pickled them (tuner.pkl and the searcher state hold no absolute path of ours)."""
    log = tmp_path / "epochs.jsonl"
    experiment = probe_experiment(tmp_path, epochs=EPOCHS, num_samples=4,  # one at a time: one Ray worker
                                  scheduler={"name": "asha", "grace_period": 2, "reduction_factor": 2})
    experiment["run"]["net_config"]["delay"] = 0.01
    experiment["run"]["callbacks"] = [{"class": "tl_testing.EpochLog", "path": str(log)}]
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(experiment))
    interrupt_after(["sweep", "experiment.yaml", "--quiet"], log, 10, ray_tmp, tmp_path)

    old, new = tmp_path / "results" / "probe", tmp_path / "elsewhere" / "probe"
    new.parent.mkdir()
    shutil.move(old, new)
    status, output = resume_here(new, shared_ray, capsys)
    assert status == 0, output
    assert not old.exists()  # nothing written where the experiment used to be
    study = optuna.load_study(study_name="probe", storage=f"sqlite:///{new / 'optuna.db'}")
    assert len(study.trials) == 4
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in study.trials)
    assert (new / "asha_state.pkl").is_file() and (new / "sweep_done").is_file()
    for result in new.glob("trial_*/result.json"):
        epochs = [json.loads(line)["epoch"] for line in result.read_text().splitlines() if line.strip()]
        assert epochs == list(range(len(epochs)))


@pytest.mark.slow
def test_an_interrupt_after_every_trial_started_leaves_the_sweep_resumable(tmp_path, ray_tmp, shared_ray, capsys):
    """Tune marks the trials it stops at an interrupt TERMINATED in memory: the sweep must still
    count them unfinished (they never ended: TrialEnds), not pruned, and not write sweep_done."""
    log, gate = tmp_path / "epochs.jsonl", tmp_path / "gate"
    experiment = probe_experiment(tmp_path, epochs=30, num_samples=2, max_concurrent_trials=2)
    experiment["run"]["net_config"]["delay"] = 0.01
    experiment["run"]["callbacks"] = [{"class": "tl_testing.EpochLog", "path": str(log)},
                                      {"class": "tl_chaos.Gate", "gate": str(gate), "from_epoch": 2}]
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(experiment))
    gate.write_text("closed\n")  # both trials wait at epoch 2: every trial has started before the interrupt
    waits = Path(f"{gate}.waits")
    process = launch(["sweep", "experiment.yaml", "--quiet"], ray_tmp, tmp_path)
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline and len(
            {line.split()[0] for line in (waits.read_text().splitlines() if waits.exists() else [])}) < 2:
        time.sleep(0.05)
    gate.unlink()
    target = epochs_logged(log) + 4
    while epochs_logged(log) < target and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len({line.split()[0] for line in waits.read_text().splitlines()}) == 2  # two trials, both started
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=180)
    assert process.returncode == 130, output
    directory = tmp_path / "results" / "probe"
    assert "2 trial(s) unfinished" in output and not (directory / "sweep_done").exists()
    assert "running" in (directory / "results.csv").read_text()

    status, output = resume_here(directory, shared_ray, capsys)
    assert status == 0, output
    study = optuna.load_study(study_name="probe", storage=f"sqlite:///{directory / 'optuna.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert all(len(t.intermediate_values) == 30 for t in study.trials)


@pytest.mark.slow
def test_a_ctrl_c_as_the_first_trials_start_lists_them_unfinished_with_their_config(tmp_path, ray_tmp):
    """SIGINT as soon as Tune's fit shows its first progress line: the trials are starting (their
    actors may not even be up, so they never report). They are `running` with their config in the
    table, results.csv and the count — never `failed` — nor failed in the study."""
    experiment = probe_experiment(tmp_path, epochs=3, num_samples=3, max_concurrent_trials=2)
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(experiment))
    process = launch(["sweep", "experiment.yaml"], ray_tmp, tmp_path)  # not --quiet: the live table
    lines = []
    for line in process.stdout:  # the first progress line is printed when the fit begins
        lines.append(line)
        if "done (" in line:
            process.send_signal(signal.SIGINT)
            break
    output = "".join(lines) + process.communicate(timeout=180)[0]
    assert process.returncode == 130, output
    assert "Traceback" not in output and "Tuner.restore" not in output
    assert "[tuneloop] stopping:" in output
    directory = tmp_path / "results" / "probe"
    rows = list(csv.DictReader((directory / "results.csv").open()))
    assert rows and {r["state"] for r in rows} <= {"running", "complete", "pruned"}, rows
    unfinished = [r for r in rows if r["state"] == "running"]
    assert unfinished and all(r["optimizer_config.lr"] not in ("", "None") for r in rows)
    assert f"{len(unfinished)} trial(s) unfinished" in output and " 0 failed" in output
    study = optuna.load_study(study_name="probe", storage=f"sqlite:///{directory / 'optuna.db'}")
    assert {t.state.name for t in study.trials} <= {"RUNNING", "COMPLETE", "PRUNED"}  # none failed
    # (that such a sweep resumes to its end: test_an_interrupt_after_every_trial_started_...)


@pytest.mark.ray
def test_a_ctrl_c_before_tune_starts_exits_130_without_a_traceback(tmp_path, ray_tmp):
    """SIGINT while Ray starts (before Tune's own Ctrl-C handling): one line, exit 130, Ray's
    processes gone, and nothing written (the run can simply be started again)."""
    experiment = probe_experiment(tmp_path)
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(experiment))
    process = launch(["sweep", "experiment.yaml", "--quiet"], ray_tmp, tmp_path)
    deadline = time.monotonic() + 120
    while not any(Path(ray_tmp).glob("**/session_*")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # Ray's session directory appears as ray.init starts its processes
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    assert "Traceback" not in output
    assert output.strip().splitlines()[-1].startswith("[tuneloop] interrupted"), output
    assert not (tmp_path / "results").exists()
    assert ray_processes_after(ray_tmp) == []


@pytest.mark.slow
def test_a_driver_killed_right_after_a_trials_final_checkpoint_resumes_it_as_complete(tmp_path, ray_tmp, shared_ray,
                                                                                     capsys):
    """The last epoch's result and checkpoint are in Tune's snapshot, but the trial had not ended
    when the driver died: restored from its final checkpoint, it has nothing left to train. It
    reports its last epoch again and ends COMPLETE with its last value in Tune, the study and
    results.csv (not FAIL, not retrained)."""
    import csv

    marker, log = tmp_path / "held", tmp_path / "epochs.jsonl"
    experiment = probe_experiment(tmp_path, epochs=3, num_samples=1, max_concurrent_trials=1)
    experiment["run"]["checkpoint_config"]["save_every_n_epochs"] = 1
    experiment["run"]["callbacks"] = [{"class": "tl_testing.EpochLog", "path": str(log)},
                                      {"class": "tl_faults.HoldAfterLastEpoch", "marker": str(marker)}]
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(experiment))
    directory = tmp_path / "results" / "probe"

    driver = launch(["sweep", str(path), "--quiet"], ray_tmp, tmp_path)
    deadline = time.monotonic() + 180
    while not marker.exists() and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), driver.communicate(timeout=60)[0]
    time.sleep(2.0)  # the driver has the last result; the trial is held before its end
    os.kill(driver.pid, signal.SIGKILL)
    driver.communicate(timeout=60)
    time.sleep(1.0)
    assert epochs_logged(log) == 3

    status, output = resume_here(directory, shared_ray, capsys)
    assert status == 0, output
    assert epochs_logged(log) == 3  # nothing trained again
    rows = [json.loads(line) for line in next(directory.glob("trial_*/result.json")).read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert rows[-1]["trial_done"] and rows[-1]["done_reason"] == "complete"
    assert rows[-1]["resumed_from"].startswith("checkpoint_")  # the restored trial's own report
    study = optuna.load_study(study_name="probe", storage=f"sqlite:///{directory / 'optuna.db'}")
    [trial] = study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == rows[-1]["val_loss"]
    with open(directory / "results.csv") as handle:
        [row] = list(csv.DictReader(handle))
    assert row["state"] == "complete" and float(row["val_loss"]) == rows[-1]["val_loss"]
    assert int(row["epochs"]) == 3


@pytest.mark.slow
def test_a_killed_driver_whose_snapshot_lagged_loses_no_epoch(tmp_path, ray_tmp, monkeypatch, shared_ray, capsys):
    """Tune snapshots the experiment only now and then (here: once, at the start, before any
    checkpoint). The driver is SIGKILLed with the trial 4 epochs in: the resumed trial continues
    from its own newest checkpoint (epoch 3) instead of epoch 0, sends Tune the 4 reports its
    snapshot lost, and its history, metrics.csv, the study and its MLflow run hold every epoch once."""
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "3600")
    gate, log = tmp_path / "gate", tmp_path / "epochs.jsonl"
    gate.touch()
    experiment = probe_experiment(tmp_path, epochs=6, num_samples=1, max_concurrent_trials=1,
                                  loggers=["mlflow"])  # its default store: mlflow.db in the experiment directory
    experiment["run"]["checkpoint_config"]["save_every_n_epochs"] = 1
    experiment["run"]["callbacks"] = [{"class": "tl_testing.EpochLog", "path": str(log)},
                                      {"class": "tl_chaos.Gate", "gate": str(gate), "from_epoch": 4}]
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(experiment))
    directory = tmp_path / "results" / "probe"

    driver = launch_until_gated(path, gate, ray_tmp, tmp_path)
    os.kill(driver.pid, signal.SIGKILL)
    driver.communicate(timeout=60)
    assert not ray_processes_after(ray_tmp)
    assert rework_allowed(log, restored_epochs(directory)) == 4  # waits for the trial's process to end
    assert restored_epochs(directory) == {}  # the snapshot names no checkpoint of the trial
    gate.unlink()

    status, output = resume_here(directory, shared_ray, capsys)
    assert status == 0, output
    assert [json.loads(line)["epoch"] for line in log.read_text().splitlines()] == list(range(6))  # none twice
    [result] = directory.glob("trial_*/result.json")
    rows = [json.loads(line) for line in result.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(6))
    assert [r["training_iteration"] for r in rows] == list(range(1, 7))  # the schedulers' clock
    assert [r["resumed_from"] for r in rows[4:]] == ["checkpoint_000003"] * 2
    with open(result.parent / "metrics.csv") as handle:
        assert [float(r["val_loss"]) for r in csv.DictReader(handle)] == [r["val_loss"] for r in rows]
    [trial] = optuna.load_study(study_name="probe", storage=f"sqlite:///{directory / 'optuna.db'}").trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == rows[-1]["val_loss"]
    assert [trial.intermediate_values[e] for e in range(6)] == [r["val_loss"] for r in rows]
    assert sorted(p.name for p in result.parent.glob("checkpoint_*"))[-2:] == ["checkpoint_000004",
                                                                             "checkpoint_000005"]
    # the resumed driver went on with the trial's MLflow run: one run, every epoch once, complete
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{directory / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("probe").experiment_id])
    assert run.data.tags["tune_trial_id"] == result.parent.name.removeprefix("trial_")
    history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val_loss")]
    assert sorted(history) == [(r["epoch"], r["val_loss"]) for r in rows]
    assert run.data.tags["tuneloop.state"] == "complete" and run.info.status == "FINISHED"
