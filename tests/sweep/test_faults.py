"""Fault injection into real sweeps (local Ray, SQLite Optuna), each ending with nothing finished lost:
a trial whose forward raises and a NaN trial (both fail alone, the sweep goes on), a trial whose
worker process is SIGKILLed from inside or from outside (Ray retries it from its checkpoint, at
most `max_failures` times), and the driver SIGKILLed three times at random points (seeded) then
resumed to the end. The other faults have their tests elsewhere: a crashed trial, a truncated
latest checkpoint and another experiment's checkpoint in test_trial.py; driver SIGINT / SIGKILL
with a damaged Tune state in test_resume.py; a lost node in test_lost_node.py.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest

from tl_ray import ray_processes_after
from tl_sweeps import (epochs_logged, interruptible_experiment, launch, probe_experiment, restored_epochs,
                       rework_allowed, run_sweep, study_of, trial_rows)

State = optuna.trial.TrialState


def grid(key: str, values: list) -> dict:
    """Search space and sampler that run each value of `key` once, in order."""
    return {"search_space": {key: {"type": "categorical", "choices": values}},
            "sampler": {"name": "GridSampler", "seed": 0, "search_space": {key: values}},
            "num_samples": len(values)}


def results_csv(directory: Path) -> dict[str, str]:
    """trial id -> state as tuneloop's results.csv says (Tune's side)."""
    import csv

    with open(directory / "results.csv") as handle:
        return {row["trial_id"]: row["state"] for row in csv.DictReader(handle)}


def by_config(directory: Path, key: str) -> dict:
    """config value of `key` -> (trial id, Tune rows) for every trial directory."""
    out = {}
    for name, rows in trial_rows(directory).items():
        params = json.loads((directory / name / "params.json").read_text())
        out[params[key]] = (name.removeprefix("trial_"), rows)
    return out


@pytest.mark.slow
def test_the_driver_killed_three_times_resumes_to_the_end(tmp_path, ray_tmp):
    """`tuneloop sweep`, then SIGKILL of the driver at three random points (seeded: the same points
    every run) with `tuneloop resume` in between, then a last resume: every trial's epochs once and
    in order, the Optuna study holds exactly the sweep's trials (none RUNNING, no config twice, each
    matching one Tune trial's history), and at most one checkpoint interval retrained per kill."""
    # enough work that the third kill point (up to 3 x 6 epochs in, whatever ASHA prunes) comes
    # before the sweep's end: 6 trials of 6 epochs, at least 2 each and half of them 4
    trials, epochs = 6, 6
    path, directory, log = interruptible_experiment(tmp_path, trials, epochs)
    rng = random.Random(2026)
    kills = 3

    commands = [["sweep", str(path), "--quiet"]] + [["resume", str(directory)]] * kills
    allowed = 0  # epochs the resumes may train again (see test_resume.rework_allowed)
    for step, command in enumerate(commands):
        process = launch(command, ray_tmp, tmp_path)
        if step < kills:
            target = epochs_logged(log) + rng.randint(1, 6)  # a random point of the run
            deadline = time.monotonic() + 300
            while epochs_logged(log) < target and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert epochs_logged(log) >= target, "the sweep did not reach the point to kill it at"
            time.sleep(rng.uniform(0, 0.1))
            assert process.poll() is None, process.communicate()[0]  # killed while running, not after
            os.kill(process.pid, signal.SIGKILL)
        output, _ = process.communicate(timeout=240)
        if step < kills:
            assert not ray_processes_after(ray_tmp), "Ray processes outlived the killed driver"
            allowed += rework_allowed(log, restored_epochs(directory))
        else:
            assert process.returncode == 0, output

    histories = {}
    for result in sorted(directory.glob("trial_*/result.json")):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        assert [r["epoch"] for r in rows] == list(range(len(rows))), result
        histories[result.parent.name] = rows
    assert len(histories) == trials
    # a trial started after the snapshot a resume restored, and trained again by a new trial, is gone
    assert sorted(p.name for p in directory.glob("trial_*")) == sorted(histories)
    study = optuna.load_study(study_name="probe", storage=f"sqlite:///{directory / 'optuna.db'}")
    assert len(study.trials) == trials
    assert all(t.state in (State.COMPLETE, State.PRUNED) for t in study.trials)
    assert len({t.params["optimizer_config.lr"] for t in study.trials}) == trials
    tune_states = results_csv(directory)
    for trial in study.trials:
        told = [trial.intermediate_values[e] for e in sorted(trial.intermediate_values)]
        matches = [(name, rows) for name, rows in histories.items()
                   if [r["val_loss"] for r in rows][:len(told)] == told[:len(rows)]]
        assert len(matches) == 1, trial
        name, rows = matches[0]
        state = tune_states[name.removeprefix("trial_")]
        if trial.state == State.COMPLETE:
            assert state == "complete" and len(rows) == len(told) == epochs and trial.value == rows[-1]["val_loss"]
        else:  # pruned (perhaps around a kill): the study and Tune agree on the epochs both hold (above);
            # how many more one of them holds depends on how far Tune's state lagged at the kill
            assert state == "pruned" and rows and told and not rows[-1]["trial_done"]
    needed = sum(len(rows) for rows in histories.values())
    assert epochs_logged(log) <= needed + allowed  # only what the restored state missed is trained again
    assert (directory / "sweep_done").exists()


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_a_raising_forward_and_a_nan_loss_fail_only_their_trial(tmp_path):
    """Two trials whose forward raises, two whose loss is NaN, two fine, `max_failures: 1`: the raising
    ones are retried once by Ray then FAIL (traceback in error.txt), the NaN ones stop after their
    first epoch and FAIL without a retry (not an error), the others COMPLETE; exit status 0."""
    experiment = probe_experiment(tmp_path, epochs=4, max_failures=1,
                                  **grid("net_config.mode", ["ok", "nan", "raise"]))
    # two trials per mode: the grid of mode x hidden
    experiment["sweep"]["search_space"]["net_config.hidden"] = {"type": "categorical", "choices": [8, 16]}
    experiment["sweep"]["sampler"]["search_space"]["net_config.hidden"] = [8, 16]
    experiment["sweep"]["num_samples"] = 6
    experiment["run"]["callbacks"] = [{"class": "tl_testing.MarkerCallback", "directory": str(tmp_path / "ends")}]
    status, directory = run_sweep(tmp_path, experiment)
    assert status == 0

    study = study_of(directory).trials
    assert len(study) == 6
    states = Counter((t.params["net_config.mode"], t.state) for t in study)
    assert states == {("ok", State.COMPLETE): 2, ("nan", State.FAIL): 2, ("raise", State.FAIL): 2}
    tune_states = results_csv(directory)
    trials = {}
    for name, rows in trial_rows(directory).items():
        params = json.loads((directory / name / "params.json").read_text())
        trials[name.removeprefix("trial_")] = (params["net_config.mode"], rows)
    assert len(trials) == 6
    for trial_id, (mode, rows) in trials.items():
        assert tune_states[trial_id] == ("complete" if mode == "ok" else "failed")
        error = directory / f"trial_{trial_id}" / "error.txt"
        if mode == "ok":
            assert [r["epoch"] for r in rows] == [0, 1, 2, 3] and not error.exists()
        elif mode == "nan":
            assert [r["done_reason"] for r in rows] == ["non_finite_loss"] and not error.exists()
        else:
            assert rows == [] and "Probe: forward failed on purpose" in error.read_text()
    for trial in study:  # the study's values are the Tune rows' values
        if trial.state == State.COMPLETE:
            [rows] = [rows for mode, rows in trials.values() if mode == "ok" and rows[-1]["val_loss"] == trial.value]
            assert trial.intermediate_values == {r["epoch"]: r["val_loss"] for r in rows}
    # every attempt's on_train_end: raising trials twice (1 + max_failures), the others once
    ends = Counter(len(json.loads(p.read_text())["epochs"]) for p in (tmp_path / "ends").glob("*.json"))
    assert ends == {0: 2 * 2, 1: 2, 4: 2}


class Killer(threading.Thread):
    """Kills (SIGKILL) each worker that posts its pid in `marker_dir` (KillWorker's "outside" mode)."""

    def __init__(self, marker_dir: Path):
        super().__init__(daemon=True)
        self.marker_dir, self.stop, self.killed = marker_dir, threading.Event(), []

    def run(self):
        while not self.stop.wait(0.05):
            for pid_file in self.marker_dir.glob("*.pid") if self.marker_dir.is_dir() else ():
                pid = int(pid_file.read_text())
                os.kill(pid, signal.SIGKILL)  # a Ray worker of this test's own Ray, by the pid it posted
                pid_file.rename(pid_file.with_suffix(".killed"))
                self.killed.append(pid)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_a_killed_worker_is_retried_from_its_checkpoint_up_to_max_failures(tmp_path):
    """Three trials, `max_failures: 2`, a checkpoint every epoch, each trial's worker SIGKILLed at the
    start of epoch 3: once from inside, once from outside (the test kills it), and on every attempt.
    The first two resume from checkpoint_000002 and COMPLETE with contiguous epochs, none trained
    twice; the third is attempted exactly 1 + max_failures times, then FAILs in Tune and Optuna."""
    epochs, markers, log = 6, tmp_path / "kills", tmp_path / "epochs.jsonl"
    experiment = probe_experiment(tmp_path, epochs=epochs, max_failures=2, max_concurrent_trials=2,
                                  **grid("net_config.chaos", ["inside-1", "outside-1", "inside-9"]))
    experiment["run"]["net"] = "tl_chaos.ChaosProbe"
    experiment["run"]["checkpoint_config"]["save_every_n_epochs"] = 1
    experiment["run"]["callbacks"] = [{"class": "tl_chaos.KillWorker", "marker_dir": str(markers), "kill_epoch": 3},
                                      {"class": "tl_testing.EpochLog", "path": str(log)}]
    killer = Killer(markers)
    killer.start()
    try:
        status, directory = run_sweep(tmp_path, experiment)
    finally:
        killer.stop.set()
        killer.join()
    assert status == 0
    assert len(killer.killed) == 1  # the "outside" worker, by the test

    trials = by_config(directory, "net_config.chaos")
    tune_states = results_csv(directory)
    study = {t.params["net_config.chaos"]: t for t in study_of(directory).trials}
    assert len(study) == 3 and len(trials) == 3
    attempts = Counter(p.name.split(".")[0] for p in markers.iterdir() if p.name.split(".")[-1].isdigit())
    for chaos in ("inside-1", "outside-1"):
        trial_id, rows = trials[chaos]
        assert [r["epoch"] for r in rows] == list(range(epochs))
        assert [r["resumed_from"] for r in rows] == [""] * 3 + ["checkpoint_000002"] * 3
        assert len({r["pid"] for r in rows}) == 2  # a new worker process after the kill
        assert attempts[trial_id] == 2
        assert tune_states[trial_id] == "complete" and study[chaos].state == State.COMPLETE
        assert study[chaos].value == rows[-1]["val_loss"]
    trial_id, rows = trials["inside-9"]
    assert attempts[trial_id] == 1 + 2  # max_failures honoured: two retries, then the trial fails
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert tune_states[trial_id] == "failed" and study["inside-9"].state == State.FAIL
    assert (directory / f"trial_{trial_id}" / "error.txt").exists()
    assert epochs_logged(log) == epochs + epochs + 3  # no epoch trained twice
