"""`MLflowTracker`: one MLflow run per trial of a sweep (`sweep.loggers: [mlflow]`).

Tune's `MLflowLoggerCallback` (its options), with what it lacks:
- the store: `tracking_uri`, else MLFLOW_TRACKING_URI, else `sqlite:///<experiment dir>/mlflow.db`;
- each report's numbers in one `log_batch` call, step = epoch (Optuna's step), every MLflow call in
  a writer process of its own (`tuneloop.tune.mlflow_writer`), in the order Tune made them: Tune's
  makes one call per number on the driver's loop, which the trials' reports wait for;
- the trial's final state as the Optuna study records it (`tuneloop.outcome`): the tag
  `tuneloop.state` (complete, pruned, failed) and the run's status (FINISHED, KILLED, FAILED);
- `tuneloop resume` continues each trial's run (found by its `tune_trial_id` tag), without logging
  an epoch twice;
- nothing process-wide: Tune's set-up calls `mlflow.set_tracking_uri`, which MLflow also writes into
  MLFLOW_TRACKING_URI, so a second sweep in the same process would log into the first's store.
A tracker never stops the sweep: a failed MLflow call is a warning.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from ray.air.integrations.mlflow import MLflowLoggerCallback

from tuneloop.outcome import outcome
from tuneloop.storage import MLFLOW_DB, SweepPlace
from tuneloop.tune import mlflow_writer as writer

logger = logging.getLogger(__name__)

SKIPPED = ("config", "trial_id", "date", "hostname", "node_ip", "pid", "done", "experiment_tag",
           "checkpoint_dir_name", "should_checkpoint")  # not numbers, or Tune's bookkeeping


def default_tracking_uri(directory: Path) -> str:
    """MLFLOW_TRACKING_URI, else an SQLite store in the experiment directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(directory).resolve() / MLFLOW_DB}"


class MLflowTracker(MLflowLoggerCallback):
    """One MLflow run per trial (see the module): Tune's MLflowLoggerCallback with batched, background
    logging by epoch, the study's final state, and runs continued across `tuneloop resume`."""

    _place: SweepPlace | None = None  # where the sweep is now (bind; never pickled)

    def __init__(self, tracking_uri: str | None = None, *, experiment_name: str, metric: str, **kwargs):
        """`tracking_uri`: None for MLFLOW_TRACKING_URI, else the experiment directory's SQLite store
        (decided in `setup`, where the sweep is then); `kwargs`: MLflowLoggerCallback's (tags, ...)."""
        super().__init__(tracking_uri, experiment_name=experiment_name, **kwargs)
        self.configured_uri, self.metric = tracking_uri, metric
        self._arguments = dict(tracking_uri=tracking_uri, experiment_name=experiment_name, metric=metric, **kwargs)

    def bind(self, place: SweepPlace) -> None:
        """The sweep is at `place` now (the default store lives in its directory)."""
        self._place = place

    def __getstate__(self) -> dict:
        return self._arguments  # what it was built with; a run's state (clients, runs) is built in `setup`

    def __setstate__(self, arguments: dict) -> None:
        self.__init__(**arguments)

    def setup(self, *args, **kwargs):
        if self.configured_uri is None:
            if self._place is None and not os.environ.get("MLFLOW_TRACKING_URI"):
                raise RuntimeError("MLflowTracker's default store is in the sweep's directory, but it was not "
                                   "bound to a sweep (bind(place) first)")
            self.tracking_uri = default_tracking_uri(self._place.directory if self._place else ".")
        self._failures = 0
        # spawned, not forked: the driver has Ray's threads; the process imports MLflow, not Ray
        self._writer = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                           initializer=writer.start)
        self._submit(writer.connect, self.tracking_uri, self.registry_uri, self.experiment_name)

    def log_trial_start(self, trial):
        self._submit(writer.start_run, trial.trial_id, str(trial), _params(trial.config),
                     {str(k): str(v) for k, v in (self.tags or {}).items()})

    def log_trial_result(self, iteration: int, trial, result: dict):
        epoch = result.get("epoch")
        step = int(epoch if epoch is not None else result.get("training_iteration", iteration))
        self._submit(writer.log_result, trial.trial_id, step, epoch, _numbers(result))

    def log_trial_end(self, trial, failed: bool = False):
        state, _ = outcome(trial.last_result, failed, self.metric)
        self._submit(writer.end_run, trial.trial_id, state)

    def on_experiment_end(self, trials, **info):
        self._writer.shutdown(wait=True)  # every run's last epoch and state written before the summary
        if self._failures > 1:
            logger.warning("MLflow: %d calls failed in all", self._failures)

    def _submit(self, call, *args) -> None:
        try:
            self._writer.submit(call, *args).add_done_callback(lambda done: self._failed(call, done.exception()))
        except RuntimeError as exc:  # the writer process died (BrokenProcessPool) or was shut down
            self._failed(call, exc)

    def _failed(self, call, exc: BaseException | None) -> None:
        if exc is None:
            return
        self._failures += 1
        if self._failures == 1:  # the first failure says why; the rest are counted (on_experiment_end)
            logger.warning("MLflow: %s failed: %s", call.__name__.replace("_", " "), exc)


def _params(config: dict) -> dict[str, str]:
    """The trial's searched parameters as MLflow params (values as text, at most MLflow's length)."""
    return {str(key): str(value)[:6000] for key, value in config.items()}


def _numbers(result: dict) -> dict[str, float]:
    """The report's numbers (bools as 0/1), nested dicts flattened with `/`, Tune's bookkeeping left out."""
    numbers = {}
    for key, value in result.items():
        if key in SKIPPED:
            continue
        if isinstance(value, dict):
            numbers.update({f"{key}/{k}": v for k, v in _numbers(value).items()})
        elif isinstance(value, (int, float)):
            numbers[key] = float(value)
    return numbers
