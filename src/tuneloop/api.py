"""The Python API, for notebooks and scripts: the commands as functions that return results.

    result = tuneloop.sweep("experiments/digits_mlp.yaml", overrides=["sweep.num_samples=8"])
    result.best_config, result.best_value, result.trials  # a pandas DataFrame, one row per trial
    tuneloop.resume(result.path)                            # an interrupted sweep, continued
    tuneloop.train(result.best_experiment)                  # one run of the best configuration

An experiment is a file's path or a dict of the same shape (whose import paths may also be the
classes and functions themselves, when they are defined in an importable module: Ray's workers
import them by name, and cannot import a notebook's `__main__`). Mistakes raise
`tuneloop.UserError` with the one-line message the command would print.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tuneloop.config import check_imports, load_experiment
from tuneloop.config.errors import UserError, in_file
from tuneloop.config.loading import source_name
from tuneloop.sweep.api import Experiment, SweepResult, read_sweep, resume, sweep


def train(experiment: Experiment, overrides: Iterable[str] = (), *, device: str | None = None,
          output: str | Path | None = None, progress: bool = True):
    """One run of the experiment's `run` section without Tune (as `tuneloop train`), after the
    one-batch preflight; returns `tuneloop.training.run.TrainResult` (run_dir, final and best
    val_loss, epochs trained, stop reason)."""
    from tuneloop.training import run
    from tuneloop.training.preflight import preflight

    with in_file(source_name(experiment)):
        cfg = load_experiment(experiment, overrides)
        check_imports(cfg)
        run_dir = run.new_run_dir(cfg, output, key="output")
        preflight(cfg, device=device)
        return run.train(cfg, run_dir=run_dir, device=device, progress=progress)


__all__ = ["SweepResult", "UserError", "load_experiment", "read_sweep", "resume", "sweep", "train"]
