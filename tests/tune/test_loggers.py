"""`sweep.loggers`: TensorBoard event files and MLflow runs per trial, read back with TensorBoard's
own event reader and `mlflow.search_runs` from a real `mlflow server` on 127.0.0.1, against each
trial's `result.json`, `results.csv` and the Optuna study. (MLflow's default SQLite store across a
killed driver and `tuneloop resume`: tests/sweep/test_resume.py.)"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from tl_s3 import free_port
from tl_sweeps import probe_experiment, run_sweep, study_of, trial_rows

EPOCHS = 4


class Trial:
    """What Tune's logger callbacks read of a trial (without starting Ray)."""

    def __init__(self, trial_id: str, lr: float):
        self.trial_id, self.config, self.last_result = trial_id, {"optimizer_config.lr": lr}, {}

    def __str__(self):
        return f"trial_{self.trial_id}"


def report(tracker, trial: Trial, epoch: int, val_loss: float, done: bool = False) -> None:
    trial.last_result = {"epoch": epoch, "val_loss": val_loss, "training_iteration": epoch + 1, "trial_done": done,
                         "config": trial.config, "trial_id": trial.trial_id}
    tracker.log_trial_result(epoch + 1, trial, trial.last_result)


def test_a_resumed_driver_continues_each_trials_run_without_logging_an_epoch_twice(tmp_path):
    import mlflow

    from tuneloop.tune.mlflow_logger import MLflowTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    trial = Trial("a1", 0.01)
    first = MLflowTracker(uri, experiment_name="probe", metric="val_loss")
    first.setup()
    first.log_trial_start(trial)
    for epoch in range(3):
        report(first, trial, epoch, 1.0 / (epoch + 1))
    first.on_experiment_end(trials=[])  # the driver dies here; its run stays RUNNING
    second = MLflowTracker(uri, experiment_name="probe", metric="val_loss")  # the resumed driver's
    second.setup()
    second.log_trial_start(trial)
    for epoch in range(1, 5):  # restored from the checkpoint of epoch 0: epochs 1 and 2 come again
        report(second, trial, epoch, 1.0 / (epoch + 1) + (0.5 if epoch < 3 else 0.0), done=epoch == 4)
    second.log_trial_end(trial)
    second.on_experiment_end(trials=[])
    client = mlflow.MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("probe").experiment_id])
    history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val_loss"))
    assert history == [(0, 1.0), (1, 0.5), (2, 1 / 3), (3, 0.25), (4, 0.2)]  # the first values of epochs 1, 2
    assert run.data.params == {"optimizer_config.lr": "0.01"}
    assert run.data.tags["tuneloop.state"] == "complete" and run.info.status == "FINISHED"


def test_a_tracking_server_that_does_not_answer_is_one_warning_and_a_count(tmp_path, caplog, monkeypatch):
    from tuneloop.tune.mlflow_logger import MLflowTracker
    from tuneloop.tune.mlflow_writer import GIVE_UP_AFTER

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")  # the writer process inherits it
    tracker = MLflowTracker(f"http://127.0.0.1:{free_port()}", experiment_name="probe", metric="val_loss")
    tracker.setup()
    trials = [Trial(f"t{i}", 0.01) for i in range(2)]
    for trial in trials:
        tracker.log_trial_start(trial)
        for epoch in range(5):
            report(tracker, trial, epoch, 1.0)
        tracker.log_trial_end(trial)
    with caplog.at_level("WARNING", logger="tuneloop.tune.mlflow_logger"):
        tracker.on_experiment_end(trials=[])  # returns: after GIVE_UP_AFTER failures the rest are skipped
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("MLflow: connect failed: ")
    assert warnings[1] == f"MLflow: {1 + 2 * 7} calls failed in all"  # connect, and each trial's 7 calls
    assert GIVE_UP_AFTER < 1 + 2 * 7


def test_a_writer_killed_while_it_creates_the_sqlite_store_leaves_none_half_made(tmp_path):
    """MLflow makes a new SQLite store's tables one migration at a time, for seconds: the store's file
    is never seen part-made, and a writer killed meanwhile (its driver was) leaves none that the next
    writer cannot open and log to ("table ... already exists")."""
    import mlflow

    from tuneloop.tune import mlflow_writer

    store = tmp_path / "mlflow.db"
    uri = f"sqlite:///{store}"
    writer = subprocess.Popen([sys.executable, "-c", "import sys; from tuneloop.tune import mlflow_writer as w; "
                               "w.connect(sys.argv[1], None, 'probe')", uri])
    seen, revisions = set(), []  # the revisions the store's file was seen at; those of the migrations seen
    deadline = time.monotonic() + 60
    while len(revisions) < 4:  # a few migrations in
        assert writer.poll() is None and time.monotonic() < deadline, f"the writer ended: {revisions}"
        seen.add(_revision(store))
        for path in tmp_path.iterdir():
            if _revision(path) not in (None, *revisions[-1:]):
                revisions.append(_revision(path))
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    mlflow_writer.connect(uri, None, "probe")  # the next driver's writer, here in this process
    mlflow_writer.start_run("t1", "trial_t1", {"lr": "0.1"}, {})
    mlflow_writer.log_result("t1", 0, 0, {"val_loss": 0.5})
    mlflow_writer._STATE.clear()
    client = mlflow.MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("probe").experiment_id])
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val_loss")] == [(0, 0.5)]
    assert seen - {None} <= {_revision(store)}, "the store's file was seen part-made"
    assert [path.name for path in tmp_path.iterdir() if path != store] == []  # the killed writer's scratch too


def _revision(path: Path) -> str | None:
    """The MLflow schema revision of the SQLite file `path`; None where it has none (yet) or is busy."""
    import sqlite3

    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.05) as db:
            return db.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    except (sqlite3.Error, TypeError):  # no such file or table yet, being written, or no row yet
        return None


@pytest.fixture
def mlflow_server(tmp_path):
    """`mlflow server` on 127.0.0.1 with an SQLite store in tmp_path; its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1",
                               "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                              # no job runners (seven `huey` processes importing MLflow): runs and metrics only
                              env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
                time.sleep(0.2)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the workers it started, in its own session
        server.wait(timeout=30)


@pytest.mark.usefixtures("ray_local")
def test_tensorboard_and_mlflow_hold_each_trial_as_the_study_does(tmp_path, mlflow_server, monkeypatch):
    import mlflow
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    experiment = probe_experiment(tmp_path, epochs=EPOCHS, num_samples=4,
                                  scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 2},
                                  loggers=["tensorboard", {"name": "mlflow", "tracking_uri": mlflow_server,
                                                           "experiment_name": "probe-runs"}])
    environment = os.environ.get("MLFLOW_TRACKING_URI")
    status, directory = run_sweep(tmp_path, experiment)
    assert status == 0
    assert os.environ.get("MLFLOW_TRACKING_URI") == environment  # nothing process-wide: a second sweep is unaffected
    histories = {name.removeprefix("trial_"): rows for name, rows in trial_rows(directory).items()}
    with open(directory / "results.csv") as handle:
        states = {row["trial_id"]: row["state"] for row in csv.DictReader(handle)}
    assert set(states) == set(histories) and len(histories) == 4
    assert "pruned" in states.values() and "complete" in states.values()  # ASHA stopped some, not all

    # TensorBoard: each trial's directory holds its reports, by Tune's training iteration
    for trial_id, rows in histories.items():
        events = EventAccumulator(str(directory / f"trial_{trial_id}"))
        events.Reload()
        logged = [(e.step, e.value) for e in events.Scalars("ray/tune/val_loss")]
        assert logged == [(r["training_iteration"], pytest.approx(r["val_loss"], rel=1e-6)) for r in rows]

    # MLflow: one run per trial, every epoch once, the searched parameter, the study's final state
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)  # not mlflow.set_tracking_uri: it outlives the test
    runs = mlflow.search_runs(experiment_names=["probe-runs"])
    assert sorted(runs["tags.tune_trial_id"]) == sorted(histories)
    client = mlflow.MlflowClient(mlflow_server)
    status_of = {"complete": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}
    for _, run in runs.iterrows():
        rows = histories[run["tags.tune_trial_id"]]
        history = sorted((m.step, m.value) for m in client.get_metric_history(run["run_id"], "val_loss"))
        assert history == [(r["epoch"], r["val_loss"]) for r in rows]
        assert float(run["params.optimizer_config.lr"]) == rows[0]["config"]["optimizer_config.lr"]
        state = states[run["tags.tune_trial_id"]]
        assert run["tags.tuneloop.state"] == state and run["status"] == status_of[state]
    study_states = Counter(t.state.name.lower() for t in study_of(directory).trials)
    assert Counter(runs["tags.tuneloop.state"]) == study_states
    assert not (directory / "mlflow.db").exists()  # the server's store, not the default one
