"""The MLflow logger's writer process: every MLflow call of a sweep, in the order the driver made them.

`tuneloop.tune.mlflow_logger.MLflowTracker` sends these functions to one process of its own (a
`ProcessPoolExecutor` of one worker: calls run one at a time, in order). The MLflow client's work
(SQLAlchemy for an SQLite store, JSON over HTTP for a server) is Python that holds the GIL: in a
thread of the driver it slowed the driver's loop, which every trial's report waits for, by 40 ms a
report with an SQLite store. This module imports MLflow and nothing of Ray (of tuneloop, the leaf
`outcome`), so the process starts quickly. Its state (the client, each trial's run) lives in
`_STATE`, in that process.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import signal
import socket
import threading
import time

from tuneloop.outcome import COMPLETE, FAILED, PRUNED

STATE_TAG, TRIAL_TAG = "tuneloop.state", "tune_trial_id"
RUN_STATUS = {COMPLETE: "FINISHED", PRUNED: "KILLED", FAILED: "FAILED"}  # the study's state → the run's status
_STATE: dict = {}  # in the writer process: client, experiment_id, runs (trial id → run id), logged (last epoch)
GIVE_UP_AFTER = 3  # failed calls in a row, after which the writer stops calling MLflow (each would wait out retries)


def start() -> None:
    """First, in the writer process: Ctrl-C is the driver's to handle (it ends the writer when the
    sweep ends), and the writer exits once its driver is gone (a killed driver cannot say so)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # a tracking server that stopped answering: a call fails in seconds, not minutes (MLflow's defaults:
    # 7 retries, backoff factor 2, 120 s timeout), unless the user set these
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=watch, name="tuneloop-mlflow-parent", daemon=True).start()


def _counted(call):
    """`call`, given up after GIVE_UP_AFTER failures in a row: a store that is gone must not hold the
    sweep's end (which waits for the writer) for every report still queued."""
    @functools.wraps(call)  # pickled by name: the driver sends these to the writer process
    def counted(*args):
        if _STATE.get("failed_in_a_row", 0) >= GIVE_UP_AFTER:
            raise RuntimeError(f"skipped: the MLflow store failed {GIVE_UP_AFTER} calls in a row")
        try:
            call(*args)
        except Exception:
            _STATE["failed_in_a_row"] = _STATE.get("failed_in_a_row", 0) + 1
            raise
        _STATE["failed_in_a_row"] = 0

    return counted


@_counted
def connect(tracking_uri: str, registry_uri: str | None, experiment_name: str) -> None:
    """A client of the store, and the experiment `experiment_name` (created if new)."""
    from mlflow import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "Creating initial MLflow database tables"
    _create_sqlite_store(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(experiment_name)
    _STATE.update(client=client, experiment_id=experiment_id, runs={}, logged={})


@_counted
def start_run(trial_id: str, name: str, params: dict[str, str], tags: dict[str, str]) -> None:
    """The trial's run: the one an earlier driver started (a resumed sweep), else a new one."""
    from mlflow.entities import Param

    client, runs = _connected(), _STATE["runs"]
    if trial_id in runs:  # a retried trial goes on in its run
        return
    found = client.search_runs([_STATE["experiment_id"]], f"tags.{TRIAL_TAG} = '{trial_id}'", max_results=1)
    if found:
        run_id, last_epoch = found[0].info.run_id, found[0].data.metrics.get("epoch", -math.inf)
        client.update_run(run_id, status="RUNNING")
    else:
        run = client.create_run(_STATE["experiment_id"], run_name=name, tags={**tags, "trial_name": name,
                                                                              TRIAL_TAG: trial_id})
        run_id, last_epoch = run.info.run_id, -math.inf
        entries = [Param(key, value) for key, value in params.items()]
        for start in range(0, len(entries), 100):  # MLflow takes at most 100 params a call
            client.log_batch(run_id, params=entries[start:start + 100])
    runs[trial_id], _STATE["logged"][trial_id] = run_id, last_epoch


@_counted
def log_result(trial_id: str, step: int, epoch: float | None, numbers: dict[str, float]) -> None:
    """One report's numbers in one call; an epoch already logged (a resumed trial's rerun) is skipped."""
    from mlflow.entities import Metric

    client = _connected()
    run_id = _STATE["runs"].get(trial_id)
    if run_id is None or (epoch is not None and epoch <= _STATE["logged"][trial_id]):
        return
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, value, now, step) for key, value in numbers.items()])
    if epoch is not None:
        _STATE["logged"][trial_id] = epoch


@_counted
def end_run(trial_id: str, state: str) -> None:
    """The trial's final state as a tag and as the run's status."""
    client = _connected()
    run_id = _STATE["runs"].pop(trial_id, None)
    if run_id is not None:
        client.set_tag(run_id, STATE_TAG, state)
        client.set_terminated(run_id, status=RUN_STATUS[state])


def _create_sqlite_store(tracking_uri: str) -> None:
    """A new SQLite store is created whole or not at all: its tables are made in a scratch file beside
    it, which then takes the store's name. MLflow makes them in place, one migration at a time (seconds
    on a slow machine); a writer killed in between (it exits a second after its driver dies) left a
    store that no later client could open ("table ... already exists")."""
    from mlflow import MlflowClient
    from sqlalchemy.engine import make_url

    database = make_url(tracking_uri).database if tracking_uri.startswith("sqlite:") else None
    if not database or database == ":memory:" or os.path.exists(database):
        return
    folder, name = os.path.split(os.path.abspath(database))
    store, prefix = os.path.join(folder, name), f".{name}.{socket.gethostname()}."
    for stale in os.listdir(folder):  # a killed writer's scratch (and SQLite's journal of it), on this machine
        pid, dot, rest = stale.removeprefix(prefix).partition(".")
        if stale.startswith(prefix) and pid.isdigit() and rest in ("new", "new-journal") and not _alive(int(pid)):
            os.unlink(os.path.join(folder, stale))
    scratch = os.path.join(folder, f"{prefix}{os.getpid()}.new")
    try:
        MlflowClient(tracking_uri=f"sqlite:///{scratch}").search_experiments(max_results=1)  # makes the tables
        try:
            os.link(scratch, store)  # never over a store another writer made meanwhile
        except FileExistsError:
            pass
    finally:
        for leftover in (scratch, f"{scratch}-journal"):
            if os.path.exists(leftover):
                os.unlink(leftover)


def _alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def _connected():
    if "client" not in _STATE:
        raise RuntimeError("no MLflow store (connecting to it failed, see the warning before)")
    return _STATE["client"]
