"""Concurrency: two sweeps at once in different experiment directories do not interfere (each
`tuneloop sweep` starts its own embedded local Ray, in the same Ray temp dir as two users' default
runs would); a second driver on a directory already being run or resumed is refused with the pid
of the first, before its Ray starts (an OS lock, released however the first one ends)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml

from tl_ray import leftover_ray_processes
from tl_sweeps import epochs_logged, launch, probe_experiment


def write_experiment(tmp_path: Path, name: str, *, low: float, high: float, num_samples: int, epochs: int,
                     log: Path, gate: Path | None = None) -> Path:
    experiment = probe_experiment(tmp_path, epochs=epochs, num_samples=num_samples, max_concurrent_trials=1,
                                  search_space={"optimizer_config.lr": {"type": "float", "low": low, "high": high,
                                                                        "log": True}})
    experiment["sweep"]["storage_path"] = str(tmp_path / name)
    experiment["run"]["net_config"]["delay"] = 0.005
    experiment["run"]["callbacks"] = [{"class": "tl_testing.EpochLog", "path": str(log)}]
    if gate is not None:  # each trial waits at epoch 1 while the file `gate` exists (tl_chaos.Gate)
        experiment["run"]["callbacks"].append({"class": "tl_chaos.Gate", "gate": str(gate), "from_epoch": 1})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(experiment))
    return path


def tune_rows(directory: Path) -> dict[str, list[dict]]:
    return {p.parent.name: [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
            for p in directory.glob("trial_*/result.json")}


@pytest.mark.slow
def test_two_sweeps_at_once_do_not_interfere(tmp_path, ray_tmp):
    """Same study name ("probe"), different directories, disjoint lr ranges, 3 and 4 trials, run
    at the same time: each study and each Tune experiment has exactly its own trials."""
    specs = {"a": (1e-3, 1e-2, 3), "b": (2e-2, 1e-1, 4)}
    gate = tmp_path / "gate"  # both sweeps' first trials wait at it: the sweeps overlap, however slow a start
    gate.write_text("closed\n")
    processes = {}
    for name, (low, high, samples) in specs.items():
        path = write_experiment(tmp_path, name, low=low, high=high, num_samples=samples, epochs=6,
                                log=tmp_path / f"{name}.jsonl", gate=gate)
        processes[name] = launch(["sweep", str(path), "--quiet"], ray_tmp, tmp_path)
    waits, deadline = Path(f"{gate}.waits"), time.monotonic() + 300
    while time.monotonic() < deadline and all(p.poll() is None for p in processes.values()) and len(
            {line.split()[0] for line in (waits.read_text().splitlines() if waits.exists() else [])}) < 2:
        time.sleep(0.05)
    gate.unlink()  # open: every later trial passes it at once
    outputs = {name: process.communicate(timeout=240)[0] for name, process in processes.items()}
    assert len({line.split()[0] for line in waits.read_text().splitlines()}) >= 2, outputs  # both waited
    for name, process in processes.items():
        assert process.returncode == 0, outputs[name]

    windows = {}
    for name, (low, high, samples) in specs.items():
        directory = tmp_path / name / "probe"
        study = optuna.load_study(study_name="probe", storage=f"sqlite:///{directory / 'optuna.db'}")
        assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * samples
        assert all(low <= t.params["optimizer_config.lr"] <= high for t in study.trials)
        rows = tune_rows(directory)
        assert len(rows) == samples
        for trial_rows in rows.values():
            assert [r["epoch"] for r in trial_rows] == list(range(6))
            assert low <= trial_rows[0]["config"]["optimizer_config.lr"] <= high
        lrs = sorted(r[-1]["config"]["optimizer_config.lr"] for r in rows.values())
        assert lrs == sorted(t.params["optimizer_config.lr"] for t in study.trials)
        assert f"{samples} trials: {samples} complete" in outputs[name]
        assert epochs_logged(tmp_path / f"{name}.jsonl") == samples * 6
        windows[name] = (min(r[0]["started_at"] for r in rows.values()),
                         max(r[-1]["reported_at"] for r in rows.values()))
        windows[name + "_ids"] = set(rows)
    assert not windows["a_ids"] & windows["b_ids"]
    assert windows["a"][0] < windows["b"][1] and windows["b"][0] < windows["a"][1], "the sweeps did not overlap"


def wait_for_lines(path: Path, count: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while epochs_logged(path) < count and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, process.communicate()[0]
    assert epochs_logged(path) >= count


def refused(command: list[str], cwd: Path) -> tuple[str, list[str]]:
    """Run a second driver with a Ray temp dir of its own: (its stderr, what it put in that dir)."""
    own_tmp = tempfile.mkdtemp(prefix="tlc-", dir="/tmp")
    try:
        done = subprocess.run([sys.executable, "-m", "tuneloop.cli", *command], cwd=cwd, capture_output=True,
                              text=True, timeout=120, env={**os.environ, "RAY_TMPDIR": own_tmp})
        assert done.returncode == 2, done.stdout + done.stderr
        assert "Traceback" not in done.stderr
        return done.stderr, os.listdir(own_tmp)
    finally:
        for pid in leftover_ray_processes(own_tmp):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(own_tmp, ignore_errors=True)


@pytest.mark.slow
def test_a_second_driver_on_the_same_directory_is_refused(tmp_path, ray_tmp):
    """While `tuneloop sweep` runs (its trial held at a gate), `tuneloop resume` and `tuneloop sweep
    --overwrite` on its directory exit 2 naming its pid, before their Ray starts. The sweep is then
    SIGKILLed: its lock goes with it, a resume takes over, and a second resume is refused while the
    first runs. The first then finishes the sweep."""
    log, gate = tmp_path / "epochs.jsonl", tmp_path / "gate"
    waits = Path(f"{gate}.waits")
    path = write_experiment(tmp_path, "results", low=1e-3, high=1e-1, num_samples=2, epochs=6, log=log)
    experiment = yaml.safe_load(path.read_text())
    experiment["run"]["callbacks"].append({"class": "tl_chaos.Gate", "gate": str(gate), "from_epoch": 2})
    path.write_text(yaml.safe_dump(experiment))
    directory = tmp_path / "results" / "probe"
    gate.touch()

    sweep = launch(["sweep", str(path), "--quiet"], ray_tmp, tmp_path)
    wait_for_lines(waits, 1, sweep)  # its first trial is at the gate
    for command in (["resume", str(directory)], ["sweep", str(path), "--overwrite"]):
        err, ray_files = refused(command, tmp_path)
        assert f"error: {directory}: is already being run by pid {sweep.pid}; wait for it or stop it" in err, err
        assert ray_files == []  # refused before its Ray started
    assert (directory / "experiment.yaml").exists() and list(directory.glob("trial_*"))  # nothing deleted
    os.kill(sweep.pid, signal.SIGKILL)  # the kernel drops a killed holder's lock: no stale lock
    sweep.communicate(timeout=60)
    time.sleep(1.0)

    first = launch(["resume", str(directory)], ray_tmp, tmp_path)
    wait_for_lines(waits, 2, first)
    err, ray_files = refused(["resume", str(directory)], tmp_path)
    assert f"error: {directory}: is already being resumed by pid {first.pid}; wait for it or stop it" in err, err
    assert ray_files == []
    gate.unlink()
    output = first.communicate(timeout=240)[0]
    assert first.returncode == 0, output
    study = optuna.load_study(study_name="probe", storage=f"sqlite:///{directory / 'optuna.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    for rows in tune_rows(directory).values():
        assert [r["epoch"] for r in rows] == list(range(6))


def test_the_lock_is_released_with_its_block(tmp_path):
    from tuneloop.config.errors import UserError
    from tuneloop.sweep.locking import experiment_lock

    with experiment_lock(tmp_path, "resumed"):
        with pytest.raises(UserError, match=rf"is already being resumed by pid {os.getpid()}; wait for it"):
            with experiment_lock(tmp_path, "run"):
                pass
    with pytest.raises(RuntimeError):
        with experiment_lock(tmp_path, "run"):
            raise RuntimeError("released on the way out too")
    with experiment_lock(tmp_path, "run"):
        pass


def test_a_block_that_wrote_nothing_leaves_nothing_behind(tmp_path):
    """A sweep refused after its Ray connected (e.g. local storage on several hosts) held the lock
    of a directory it never wrote into: the lock file and the directories it created go again."""
    from tuneloop.sweep.locking import LOCK_FILE, experiment_lock

    with experiment_lock(tmp_path / "results" / "probe", "run"):
        assert (tmp_path / "results" / "probe" / LOCK_FILE).exists()
    assert list(tmp_path.iterdir()) == []
    with experiment_lock(tmp_path / "results" / "probe", "run"):
        (tmp_path / "results" / "probe" / "experiment.yaml").write_text("run: {}\n")
    assert sorted(p.name for p in (tmp_path / "results" / "probe").iterdir()) == [LOCK_FILE, "experiment.yaml"]


def test_a_lock_that_cannot_be_taken_raises_directory_unusable_and_leaves_nothing(tmp_path):
    """Creating the experiment directory below a file (or under /proc) fails before the block runs:
    DirectoryUnusable carries the OSError, and no directory or lock file is left behind."""
    from tuneloop.sweep.locking import DirectoryUnusable, experiment_lock

    (tmp_path / "blocker").write_text("a file\n")
    for target in (tmp_path / "blocker" / "results" / "probe", Path("/proc/tuneloop-no/probe")):
        ran = []
        with pytest.raises(DirectoryUnusable) as refused:
            with experiment_lock(target, "run"):
                ran.append(True)
        assert ran == [] and isinstance(refused.value.error, OSError)
        assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]
    assert (tmp_path / "blocker").read_text() == "a file\n"
