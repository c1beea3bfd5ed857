"""Ray's workers are prepared for the first trial before it asks (`tuneloop.tune.preload`), and
Tune's trial actors can take the idle workers an embedded Ray started with (`_compat`). In-process:
no Ray starts here (the benchmark `benchmarks/sweep_overhead.py` shows the start-up it saves)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tuneloop.config import load_experiment
from tuneloop.tune import _compat, preload

DIGITS = Path(__file__).resolve().parents[2] / "experiments" / "digits_mlp.yaml"


def test_the_value_keeps_the_public_modules_in_order_and_the_run():
    value = json.loads(preload.preload_value({"epochs": 3}, ["b", "a._private", "_c", "a", "a.sub"]))
    assert value == {"modules": ["b", "a", "a.sub"], "run": {"epochs": 3}}


def test_the_value_fits_an_environment_variable_keeping_the_first_modules():
    modules = [f"package{i}.module" for i in range(20_000)]
    value = preload.preload_value({}, modules)
    assert len(value) <= preload.MAX_ENV_CHARS
    kept = json.loads(value)["modules"]
    assert kept and kept == modules[: len(kept)]


def test_a_worker_imports_the_modules_and_the_runs_import_paths_silently(monkeypatch, capsys):
    for name in ("colorsys", "tuneloop.recipes.digits"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    run = load_experiment(DIGITS).run.model_dump(mode="json", by_alias=True)
    preload.import_for_trials({"modules": ["no_such_module_here", "colorsys"], "run": run})
    assert "colorsys" in sys.modules and "tuneloop.recipes.digits" in sys.modules
    assert all(name in sys.modules for name in preload.TRIAL_MODULES)
    assert capsys.readouterr() == ("", "")


def test_the_worker_takes_the_variable_out_of_its_environment(monkeypatch):
    monkeypatch.setenv(preload.ENV, json.dumps({"modules": ["colorsys"], "run": {"bad": "run"}}))
    preload._preload_in_this_worker()  # a run that does not validate: its imports are the trial's to report
    assert preload.ENV not in os.environ and "colorsys" in sys.modules


def test_only_cpu_trials_on_a_ray_whose_idle_workers_mostly_run_them_preload(monkeypatch):
    cfg = load_experiment(DIGITS, ["sweep.max_concurrent_trials=2"])
    monkeypatch.setattr(_compat, "detected_cpus", lambda: 2)
    assert preload.preload_for(cfg, ["colorsys"]) is not None
    monkeypatch.setattr(_compat, "detected_cpus", lambda: 16)  # the embedded Ray gets 2 CPUs: 2 workers, both used
    assert preload.preload_for(cfg, ["colorsys"]) is not None
    cfg = load_experiment(DIGITS, ["sweep.max_concurrent_trials=1", "sweep.resources_per_trial.cpu=4"])
    assert preload.preload_for(cfg, []) is None  # 4 CPUs, 4 idle workers: 3 would hold torch for nothing
    cfg = load_experiment(DIGITS, ["sweep.max_concurrent_trials=8", "sweep.resources_per_trial.cpu=2"])
    assert preload.preload_for(cfg, []) is not None  # 8 trials of 2 CPUs each fill the 16
    cfg = load_experiment(DIGITS, ["sweep.resources_per_trial.gpu=0.5"])
    assert preload.preload_for(cfg, []) is None  # CUDA_VISIBLE_DEVICES is set as the trial starts, after the preload


@pytest.mark.usefixtures("no_ray_running")  # the tests' shared Ray holds Tune's variables while it runs
def test_trials_inherit_tunes_variables_instead_of_a_runtime_env_until_given_back():
    from ray.tune.execution import class_cache

    defaults, propagated = class_cache.DEFAULT_ENV_VARS, class_cache.ENV_VARS_TO_PROPAGATE
    try:
        variables = _compat.inherit_trial_environment()
        assert variables == defaults and class_cache.DEFAULT_ENV_VARS == {}
        assert class_cache.ENV_VARS_TO_PROPAGATE == set()
        assert _compat.inherit_trial_environment() == defaults  # twice: the originals are kept once
    finally:
        _compat.propagate_trial_environment()
    assert class_cache.DEFAULT_ENV_VARS is defaults and class_cache.ENV_VARS_TO_PROPAGATE is propagated
