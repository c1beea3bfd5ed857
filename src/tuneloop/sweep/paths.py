"""Where a sweep's files are, and their names (each defined here once).

Experiment directory `<storage_path>/<run.name>/`: Tune's files, one directory per trial
(`trial_<id>/`), the Optuna study (`optuna.db`, unless `sweep.optuna_storage` names another
SQLAlchemy URL), `experiment.yaml` (the validated experiment), `results.csv`, `best.yaml`, the
schedulers' state files, `sweep_done`, and `mlflow.db` with `sweep.loggers: [mlflow]` (no tracking_uri).
With `storage_path: s3://...` the driver's files are in `<local_dir>/<run.name>/` and copied to the
storage at the end of each run (`tuneloop.storage`).
"""

from __future__ import annotations

from pathlib import Path

from tuneloop.config.schedulers import STATE_FILES
from tuneloop.config.schema import ExperimentConfig
from tuneloop.storage import MLFLOW_DB, Storage, SweepPlace, is_remote

EXPERIMENT_FILE = "experiment.yaml"  # the validated experiment
STUDY_FILE = "optuna.db"  # the Optuna study, unless sweep.optuna_storage names another
RESULTS_FILE = "results.csv"  # one row per trial
BEST_FILE = "best.yaml"  # a complete experiment file of the best trial
DONE_FILE = "sweep_done"  # written once every trial of the sweep has ended
LOCK_FILE = ".tuneloop.lock"  # held by the one driver of the directory (tuneloop.sweep.locking)
# the driver's files, copied to a remote storage at the end of every run (and fetched by a resume)
DRIVER_FILES = (EXPERIMENT_FILE, STUDY_FILE, MLFLOW_DB, RESULTS_FILE, BEST_FILE, DONE_FILE, *STATE_FILES)


def experiment_dir(cfg: ExperimentConfig) -> Path:
    """The local directory of the driver's files (with local storage, also Tune's experiment)."""
    base = cfg.sweep.local_dir if is_remote(cfg.sweep.storage_path) else cfg.sweep.storage_path
    return Path(base.removeprefix("file://")).expanduser().resolve() / cfg.run.name


def experiment_storage(cfg: ExperimentConfig) -> Storage:
    """Tune's experiment directory on its storage (the same as `experiment_dir` when local)."""
    return Storage.of_experiment(cfg.sweep, cfg.run.name)


def optuna_url(cfg: ExperimentConfig) -> str:
    """The study's storage URL: sweep.optuna_storage, else the experiment directory's optuna.db."""
    return cfg.sweep.optuna_storage or f"sqlite:///{experiment_dir(cfg) / STUDY_FILE}"


def sweep_place(cfg: ExperimentConfig) -> SweepPlace:
    """Where the sweep of `cfg` is now (for the searcher, schedulers and callbacks that keep files)."""
    return SweepPlace(experiment_dir(cfg), experiment_storage(cfg), optuna_url(cfg))


def trial_dirname(trial) -> str:
    """Short trial directory names (`trial_<id>`) instead of Tune's parameter-laden default."""
    return f"trial_{trial.trial_id}"
