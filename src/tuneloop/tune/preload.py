"""Ray's workers import what a trial needs before the first trial asks for one.

An embedded local Ray starts one idle Python worker per CPU as it starts, and Tune's first trial
actors take those workers; without this, each trial would then import torch, tuneloop and the
experiment's modules itself (seconds on a small machine, after the sweep is otherwise ready).
Ray's `preload_python_modules` setting makes every worker it starts import this module first;
importing it imports, best effort, the modules named in `ENV` (set while Ray starts, inherited by
Ray's processes): the run's import paths and what the driver's preflight imported, in order.
"""

from __future__ import annotations

import importlib
import json
import os

ENV = "TUNELOOP_PRELOAD"  # JSON: {"modules": [...], "run": {the run section}}
TRIAL_MODULES = ("tuneloop.tune.trainable", "tuneloop.tune.trial", "tuneloop.training.build")  # what every trial imports
MAX_ENV_CHARS = 64_000  # a single environment string may hold 128 KiB (Linux's MAX_ARG_STRLEN)


def preload_value(run: dict, modules: list[str]) -> str:
    """`ENV`'s value: the run section and the public modules of `modules` (their private
    submodules come with them), cut to fit an environment variable."""
    public = [name for name in modules if not any(part.startswith("_") for part in name.split("."))]
    while True:
        value = json.dumps({"modules": public, "run": run})
        if len(value) <= MAX_ENV_CHARS or not public:
            return value
        public = public[: len(public) // 2]  # the first imported: what the others build on


def preload_for(cfg, modules: list[str]) -> str | None:
    """`ENV`'s value for the sweep `cfg` (an ExperimentConfig): what an embedded local Ray's workers
    import as they start. None where most of them would never run a trial (Ray starts one idle
    worker per CPU it has, `tuneloop.tune.session.embedded_ray_cpus`, and each preloaded one holds
    torch and the experiment's modules in memory for the whole sweep), and for trials on GPUs (a
    module that initializes CUDA as it is imported would do so before Ray sets the trial's
    CUDA_VISIBLE_DEVICES)."""
    from tuneloop.tune import _compat
    from tuneloop.tune.session import embedded_ray_cpus

    sweep = cfg.sweep
    if sweep.resources_per_trial.gpu:
        return None
    cpus = embedded_ray_cpus(sweep) or _compat.detected_cpus()
    slots = min(sweep.max_concurrent_trials or sweep.num_samples,
                int(cpus / sweep.resources_per_trial.cpu) if sweep.resources_per_trial.cpu else cpus)
    if cpus > 2 * slots:
        return None
    return preload_value(cfg.run.model_dump(mode="json", by_alias=True), list(modules))


def import_for_trials(spec: dict) -> None:
    """Import the modules of `spec` (`preload_value`), the trial's own modules and the run's import
    paths. Silent: whatever fails here fails again, with its message, in the trial."""
    for name in [*spec.get("modules", ()), *TRIAL_MODULES]:
        try:
            importlib.import_module(name)
        except BaseException:  # noqa: BLE001 - some modules cannot be imported on their own
            pass
    try:
        from tuneloop.config.imports import resolve_run
        from tuneloop.config.schema import RunConfig

        resolve_run(RunConfig.model_validate(spec["run"]))
    except BaseException:  # noqa: BLE001 - the trial reports it
        pass


def _preload_in_this_worker() -> None:
    value = os.environ.pop(ENV, None)  # not passed on to the trial's own subprocesses
    if value:
        try:
            spec = json.loads(value)
        except ValueError:
            return
        import_for_trials(spec)


_preload_in_this_worker()
