"""The sweep driver as Python functions (`tuneloop.sweep(...)`, `tuneloop.resume(...)`): they run
what `tuneloop sweep` and `tuneloop resume` run and return a `SweepResult` read back from the
experiment directory. The top-level API (`tuneloop.api`) re-exports them beside `train` and
`load_experiment`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from tuneloop.config import ExperimentConfig, load_experiment
from tuneloop.config.errors import in_file
from tuneloop.config.loading import source_name

Experiment = str | Path | Mapping[str, Any] | ExperimentConfig


@dataclass
class SweepResult:
    """What a sweep left, read back from its experiment directory."""

    status: int  # the command's exit status: 0, 1 (every trial failed), 130 (interrupted: resume it)
    path: Path  # the experiment directory (driver's files; with local storage, the trials too)
    best_config: dict | None  # the best trial's parameters (dotted keys of sweep.search_space)
    best_value: float | None  # its value of sweep.metric
    best_trial_dir: str | None  # its directory in the storage (a local path, or an s3:// URI)
    trials: Any  # pandas.DataFrame of results.csv: state, config, last_<m> and <m>_at_best of each metric
    study: Any  # the optuna.Study the sweep recorded
    experiment: ExperimentConfig  # the validated experiment

    @property
    def best_experiment(self) -> dict | None:
        """The best trial as a complete experiment dict (best.yaml), for `tuneloop.train`."""
        from tuneloop.config.yaml12 import parse_yaml
        from tuneloop.sweep.paths import BEST_FILE

        best = self.path / BEST_FILE
        return parse_yaml(best.read_text(), file=str(best)) if best.is_file() else None


def sweep(experiment: Experiment, overrides: Iterable[str] = (), *, address: str | None = None,
          quiet: bool = False, overwrite: bool = False) -> SweepResult:
    """Run the experiment's sweep (as `tuneloop sweep`) and return its results; `quiet`: no live table."""
    from tuneloop.sweep.checks import check_experiment
    from tuneloop.sweep.paths import experiment_dir
    from tuneloop.sweep.run import run_sweep

    with in_file(source_name(experiment)):
        cfg = load_experiment(experiment, overrides)
        checked = check_experiment(cfg)
        status = run_sweep(cfg, address=address, quiet=quiet, overwrite=overwrite, preload_modules=checked["modules"])
    return read_sweep(experiment_dir(cfg), status=status)


def resume(path: str | Path, *, address: str | None = None, quiet: bool = False) -> SweepResult:
    """Continue an interrupted sweep (as `tuneloop resume`) and return its results."""
    from tuneloop.sweep.resume import local_directory, resume_sweep

    status = resume_sweep(path, address=address, quiet=quiet)
    return read_sweep(local_directory(str(path)), status=status)


def read_sweep(directory: str | Path, *, status: int = 0) -> SweepResult:
    """A sweep's results from its experiment directory (a finished or an interrupted one)."""
    import optuna
    import pandas

    from tuneloop.outcome import COMPLETE, best, finite
    from tuneloop.sweep.paths import RESULTS_FILE, experiment_storage, optuna_url
    from tuneloop.sweep.resume import load_sweep

    directory = Path(directory)
    cfg = load_sweep(directory)
    results = directory / RESULTS_FILE
    trials = pandas.read_csv(results, dtype={"trial_id": str}) if results.is_file() else pandas.DataFrame()
    rows = trials.to_dict("records")
    top = best(rows, mode=cfg.sweep.mode, state=lambda r: r["state"], value=lambda r: r[cfg.sweep.metric])
    keys = list(cfg.sweep.params())
    study = optuna.load_study(study_name=cfg.run.name, storage=optuna_url(cfg)) \
        if _has_study(cfg, directory) else None
    if top is None or top["state"] != COMPLETE or not finite(top[cfg.sweep.metric]):
        return SweepResult(status, directory, None, None, None, trials, study, cfg)
    storage = experiment_storage(cfg)
    return SweepResult(status, directory, {k: _plain(top[k]) for k in keys if k in top},
                       float(top[cfg.sweep.metric]), f"{storage.uri}/trial_{top['trial_id']}", trials, study, cfg)


def _has_study(cfg: ExperimentConfig, directory: Path) -> bool:
    from tuneloop.sweep.paths import STUDY_FILE

    return cfg.sweep.optuna_storage is not None or (directory / STUDY_FILE).is_file()


def _plain(value):
    """A pandas/numpy scalar as the Python value it stands for."""
    return value.item() if hasattr(value, "item") else value
