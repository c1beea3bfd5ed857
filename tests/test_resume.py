"""`tuneloop resume`: a sweep whose driver is interrupted (SIGINT, SIGKILL) at a random point and
resumed finishes with every trial's epochs exactly once, no config proposed twice, no epoch trained
more than needed, and an Optuna study with exactly the sweep's trials (modelled on Ray's
test_experiment_restore)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from conftest import leftover_ray_processes
from test_sweep import probe_experiment

TRIALS, EPOCHS = 6, 8


def launch(args: list[str], ray_tmp: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "tuneloop.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def epochs_logged(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def interrupt_after(command: list[str], log: Path, epochs: int, ray_tmp: str, cwd: Path) -> str:
    """Run `tuneloop COMMAND`, send SIGINT once `log` (an EpochLog) holds `epochs` more lines,
    check it exits 130 (interrupted, state saved) and return its output."""
    process = launch(command, ray_tmp, cwd)
    target = epochs_logged(log) + epochs
    deadline = time.monotonic() + 120
    while epochs_logged(log) < target and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=180)
    assert process.returncode == 130, output
    return output


def damage_searcher_state(directory: Path) -> None:
    """What a driver killed while Tune copies its snapshot to the storage leaves: a truncated file."""
    state = sorted(directory.glob("searcher-state-*.pkl"))[-1]
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 3])


def interruptible_experiment(tmp_path: Path, trials: int, epochs: int) -> tuple[Path, Path, Path]:
    """An ASHA sweep slowed down enough to be interrupted mid-epoch, a checkpoint every epoch and
    every trained epoch logged: (experiment file, experiment directory, epoch log)."""
    log = tmp_path / "epochs.jsonl"
    experiment = probe_experiment(tmp_path, epochs=epochs, num_samples=trials, max_concurrent_trials=2,
                                  scheduler={"name": "asha", "grace_period": 2, "reduction_factor": 2},
                                  sampler={"name": "TPESampler", "seed": 0})
    experiment["run"]["net_config"]["delay"] = 0.01
    experiment["run"]["checkpoint_config"]["save_every_n_epochs"] = 1
    experiment["run"]["callbacks"] = [{"class": "tl_testing.EpochLog", "path": str(log)}]
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(experiment))
    return path, tmp_path / "results" / "probe", log


@pytest.mark.parametrize("signals, damage", [([signal.SIGINT], False), ([signal.SIGKILL], False),
                                             ([signal.SIGINT, signal.SIGKILL], True)],
                         ids=["sigint", "sigkill", "sigint-then-sigkill-with-damaged-state"])
def test_interrupted_sweep_resumes_without_loss(tmp_path, ray_tmp, signals, damage):
    path, directory, log = interruptible_experiment(tmp_path, TRIALS, EPOCHS)
    rng = random.Random(len(signals))

    commands = [["sweep", str(path), "--quiet"]] + [["resume", str(directory)]] * len(signals)
    for step, command in enumerate(commands):
        process = launch(command, ray_tmp, tmp_path)
        if step < len(signals):
            target = epochs_logged(log) + rng.randint(3, 12)  # a random point of the run
            deadline = time.monotonic() + 120
            while epochs_logged(log) < target and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            os.kill(process.pid, signals[step])
        output, _ = process.communicate(timeout=240)
        if step < len(signals) and signals[step] == signal.SIGKILL:
            time.sleep(1.0)
            assert not leftover_ray_processes(ray_tmp), "Ray processes outlived the killed driver"
            if damage:
                damage_searcher_state(directory)
        if damage and step == len(signals):
            assert "Tune's experiment state was damaged (searcher-state-" in output, output
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
        else:  # a trial pruned around a kill: Tune's snapshot and the study may differ by one epoch
            assert abs(len(rows) - len(told)) <= 1 and not rows[-1]["trial_done"]
    # no more epochs trained than needed: one checkpoint interval per running trial per interruption
    # (from a damaged snapshot's backup, which may lag the snapshot by one result: one more)
    needed = sum(len(rows) for rows in histories.values())
    assert epochs_logged(log) <= needed + 2 * 1 * len(signals) + (2 if damage else 0)
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


def test_a_moved_experiment_directory_resumes_where_it_now_is(tmp_path, ray_tmp):
    """The searcher, the ASHA state and the study are found in the directory resumed, not where
    Tune pickled them (tuner.pkl and the searcher state hold no absolute path of ours)."""
    log = tmp_path / "epochs.jsonl"
    experiment = probe_experiment(tmp_path, epochs=EPOCHS, num_samples=4, max_concurrent_trials=2,
                                  scheduler={"name": "asha", "grace_period": 2, "reduction_factor": 2})
    experiment["run"]["net_config"]["delay"] = 0.01
    experiment["run"]["callbacks"] = [{"class": "tl_testing.EpochLog", "path": str(log)}]
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(experiment))
    interrupt_after(["sweep", "experiment.yaml", "--quiet"], log, 10, ray_tmp, tmp_path)

    old, new = tmp_path / "results" / "probe", tmp_path / "elsewhere" / "probe"
    new.parent.mkdir()
    shutil.move(old, new)
    resume = launch(["resume", str(new)], ray_tmp, tmp_path)
    output, _ = resume.communicate(timeout=240)
    assert resume.returncode == 0, output
    assert not old.exists()  # nothing written where the experiment used to be
    study = optuna.load_study(study_name="probe", storage=f"sqlite:///{new / 'optuna.db'}")
    assert len(study.trials) == 4
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in study.trials)
    assert (new / "asha_state.pkl").is_file() and (new / "sweep_done").is_file()
    for result in new.glob("trial_*/result.json"):
        epochs = [json.loads(line)["epoch"] for line in result.read_text().splitlines() if line.strip()]
        assert epochs == list(range(len(epochs)))


def test_an_interrupt_after_every_trial_started_leaves_the_sweep_resumable(tmp_path, ray_tmp):
    """Tune marks the trials it stops at an interrupt TERMINATED in memory: the sweep must still
    count them unfinished (they never ended: TrialEnds), not pruned, and not write sweep_done."""
    log = tmp_path / "epochs.jsonl"
    experiment = probe_experiment(tmp_path, epochs=30, num_samples=2, max_concurrent_trials=2)
    experiment["run"]["net_config"]["delay"] = 0.01
    experiment["run"]["callbacks"] = [{"class": "tl_testing.EpochLog", "path": str(log)}]
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(experiment))
    output = interrupt_after(["sweep", "experiment.yaml", "--quiet"], log, 12, ray_tmp, tmp_path)
    directory = tmp_path / "results" / "probe"
    assert "2 trial(s) unfinished" in output and not (directory / "sweep_done").exists()
    assert "running" in (directory / "results.csv").read_text()

    resume = launch(["resume", str(directory)], ray_tmp, tmp_path)
    output, _ = resume.communicate(timeout=240)
    assert resume.returncode == 0, output
    study = optuna.load_study(study_name="probe", storage=f"sqlite:///{directory / 'optuna.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert all(len(t.intermediate_values) == 30 for t in study.trials)
