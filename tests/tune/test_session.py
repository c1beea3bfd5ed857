"""The driver's Ray session (`tuneloop.tune.session`): how many CPUs a sweep's embedded local Ray
is started with. (That the embedded Ray then starts one worker per trial slot: the console-script
sweep of tests/sweep/test_progress.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneloop.config import load_experiment
from tuneloop.tune import _compat
from tuneloop.tune.session import embedded_ray_cpus

DIGITS = Path(__file__).resolve().parents[2] / "experiments" / "digits_mlp.yaml"


@pytest.mark.parametrize("overrides, machine, cpus", [
    ([], 32, 2),  # the default experiment: 2 trials at a time of 1 CPU each, not 32 idle workers
    ([], 2, 2),
    (["sweep.max_concurrent_trials=1"], 2, 1),  # one at a time: one worker, not one per core
    (["sweep.num_samples=1"], 8, 1),  # fewer trials than slots
    (["sweep.max_concurrent_trials=3", "sweep.resources_per_trial.cpu=0.5"], 8, 2),  # 1.5 CPUs: Ray counts whole ones
    (["sweep.max_concurrent_trials=4", "sweep.resources_per_trial.cpu=2"], 4, 4),  # never more than the machine
    (["sweep.max_concurrent_trials=1", "sweep.resources_per_trial.cpu=0.25"], 8, 1),  # a whole one
])
def test_an_embedded_ray_gets_the_cpus_its_concurrent_trials_hold(monkeypatch, overrides, machine, cpus):
    monkeypatch.setattr(_compat, "detected_cpus", lambda: machine)
    assert embedded_ray_cpus(load_experiment(DIGITS, overrides).sweep) == cpus


def test_distributed_trials_get_all_of_the_machines_cpus(monkeypatch):
    monkeypatch.setattr(_compat, "detected_cpus", lambda: 8)
    sweep = load_experiment(DIGITS, ["sweep.resources_per_trial.workers=2"]).sweep
    assert embedded_ray_cpus(sweep) is None  # Ray Train places each trial's workers itself
