"""`MLflowTracker`: one MLflow run per trial of a sweep (`sweep.loggers: [mlflow]`).

Tune's `MLflowLoggerCallback` (its options), with what it lacks:
- the store: `tracking_uri`, else MLFLOW_TRACKING_URI, else `sqlite:///<experiment dir>/mlflow.db`;
- each report's numbers in one `log_batch` call, step = epoch (Optuna's step), every MLflow call in
  one background thread in the order Tune made them (Tune's makes one call per number, on the
  driver's loop, which the trials' reports wait for);
- the trial's final state as the Optuna study records it (`tuneloop.outcome`): the tag
  `tuneloop.state` (complete, pruned, failed) and the run's status (FINISHED, KILLED, FAILED);
- `tuneloop resume` continues each trial's run (found by its `tune_trial_id` tag), without logging
  an epoch twice.
A tracker never stops the sweep: a failed MLflow call is a warning.
"""

from __future__ import annotations

import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ray.air.integrations.mlflow import MLflowLoggerCallback

from tuneloop.outcome import COMPLETE, FAILED, PRUNED, outcome
from tuneloop.storage import MLFLOW_DB, SweepPlace

logger = logging.getLogger(__name__)

STATE_TAG, TRIAL_TAG = "tuneloop.state", "tune_trial_id"
RUN_STATUS = {COMPLETE: "FINISHED", PRUNED: "KILLED", FAILED: "FAILED"}
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
        self._runs: dict[str, str] = {}  # trial id → MLflow run id (the worker thread's)
        self._logged_epoch: dict[str, float] = {}  # trial id → last epoch logged (the worker thread's)
        self._queue = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tuneloop-mlflow")
        self._submit(self._connect)

    def _connect(self) -> None:
        """In the worker thread (creating a new SQLite store takes a second or two): a client of the
        tracking URI, and the experiment `experiment_name`, created if new. Not Tune's set-up: its
        `mlflow.set_tracking_uri` is process-wide and MLflow writes it into MLFLOW_TRACKING_URI, so a
        second sweep in the same process (the Python API, a notebook) would log into the first's store."""
        from mlflow import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "Creating initial MLflow database tables"
        client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)
        experiment = client.get_experiment_by_name(self.experiment_name)
        self._experiment_id = experiment.experiment_id if experiment else client.create_experiment(self.experiment_name)
        self._client = client

    def log_trial_start(self, trial):
        self._submit(self._start_run, trial.trial_id, str(trial), dict(trial.config))

    def log_trial_result(self, iteration: int, trial, result: dict):
        self._submit(self._log_result, trial.trial_id, iteration, dict(result))

    def log_trial_end(self, trial, failed: bool = False):
        state, _ = outcome(trial.last_result, failed, self.metric)
        self._submit(self._end_run, trial.trial_id, state)

    def on_experiment_end(self, trials, **info):
        self._queue.shutdown(wait=True)  # every run's last epoch and state written before the summary
        self._queue = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tuneloop-mlflow")

    # --- in the worker thread, in the order Tune called ------------------------------------------

    def _start_run(self, trial_id: str, name: str, config: dict) -> None:
        if trial_id in self._runs:  # a retried trial goes on in its run
            return
        found = self._client.search_runs([self._experiment_id], f"tags.{TRIAL_TAG} = '{trial_id}'", max_results=1)
        if found:  # a resumed sweep: the run an earlier driver started
            run_id, last_epoch = found[0].info.run_id, found[0].data.metrics.get("epoch", -math.inf)
            self._client.update_run(run_id, status="RUNNING")
        else:
            tags = {**(self.tags or {}), "trial_name": name, TRIAL_TAG: trial_id}
            run_id, last_epoch = self._client.create_run(self._experiment_id, run_name=name, tags=tags).info.run_id, \
                -math.inf
            params = _params(config)
            for start in range(0, len(params), 100):  # MLflow takes at most 100 params a call
                self._client.log_batch(run_id, params=params[start:start + 100])
        self._runs[trial_id], self._logged_epoch[trial_id] = run_id, last_epoch

    def _log_result(self, trial_id: str, iteration: int, result: dict) -> None:
        from mlflow.entities import Metric

        epoch = result.get("epoch")
        if trial_id not in self._runs or (epoch is not None and epoch <= self._logged_epoch[trial_id]):
            return  # an epoch a resumed trial runs again after its checkpoint: logged once
        step = int(epoch if epoch is not None else result.get("training_iteration", iteration))
        now = int(time.time() * 1000)
        self._client.log_batch(self._runs[trial_id],
                               metrics=[Metric(key, value, now, step) for key, value in _numbers(result).items()])
        if epoch is not None:
            self._logged_epoch[trial_id] = epoch

    def _end_run(self, trial_id: str, state: str) -> None:
        run_id = self._runs.pop(trial_id, None)
        if run_id is not None:
            self._client.set_tag(run_id, STATE_TAG, state)
            self._client.set_terminated(run_id, status=RUN_STATUS[state])

    def _submit(self, call, *args, **kwargs) -> None:
        def logged():
            if call != self._connect and getattr(self, "_client", None) is None:
                return  # no store: the connection's failure was the warning
            try:
                call(*args, **kwargs)
            except Exception as exc:  # a tracker never stops the sweep
                logger.warning("MLflow: %s failed: %s", call.__name__.strip("_").replace("_", " "), exc)

        self._queue.submit(logged)


def _params(config: dict) -> list:
    """The trial's searched parameters as MLflow params (values as text, at most MLflow's length)."""
    from mlflow.entities import Param

    return [Param(str(key), str(value)[:6000]) for key, value in config.items()]


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
