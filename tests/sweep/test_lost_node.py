"""A lost node: a worker node dies (`Cluster.remove_node(allow_graceful=False)`: its raylet and
services are SIGKILLed) while a trial trains on it; the sweep still finishes, the trial resumes on the other node from its last checkpoint without
retraining an epoch before it, its history is contiguous and the Optuna study is truthful
(modelled on Ray Tune's test_cluster / test_trial_migration).

The cluster is a real multi-node Ray on this machine (`ray.cluster_utils.Cluster`): a head node
without CPUs (the driver runs there, no trial can) and two worker nodes of 1 CPU and 1 fake GPU.
Measured: the trial's worker process outlives its raylet by up to ~1.5 s and goes on reporting
(with checkpoints) until it notices; the trial resumes after the last report the driver got.
"""

from __future__ import annotations

import _thread
import json
import threading
import time
from pathlib import Path

import optuna
import pytest

from tl_sweeps import probe_experiment
from tuneloop.checkpoints import load_state

TRIALS, EPOCHS = 2, 14
DELAY = 0.02  # seconds per forward pass (8 a epoch): ~0.2 s a epoch, a trial ~3 s
KILL_AFTER_EPOCH = 3  # remove the node once a trial reported this epoch (or later) with a checkpoint
SWEEP_TIMEOUT_S = 180  # normally ~15 s


def read_rows(path: Path) -> list[dict]:
    """The complete JSON lines of a result.json or epoch log (a line being written is skipped)."""
    rows = []
    text = path.read_text() if path.exists() else ""
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return rows


class NodeKiller(threading.Thread):
    """Waits until a running trial has reported epoch >= `after_epoch` with a checkpoint, then removes
    the worker node it runs on with SIGKILL (`allow_graceful=False`)."""

    def __init__(self, cluster, directory: Path, after_epoch: int, timeout: float = 90):
        super().__init__(daemon=True)
        self.cluster, self.directory, self.after_epoch, self.timeout = cluster, directory, after_epoch, timeout
        self.done = threading.Event()
        self.victim: dict | None = None
        self.error: BaseException | None = None

    def run(self):
        try:
            self._run()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _run(self):
        deadline = time.monotonic() + self.timeout
        while not self.done.is_set() and time.monotonic() < deadline:
            for result in sorted(self.directory.glob("trial_*/result.json")):
                rows = read_rows(result)
                if not rows or rows[-1].get("trial_done"):
                    continue
                last = rows[-1]
                if last["epoch"] >= self.after_epoch and last.get("checkpoint_dir_name"):
                    node = next(n for n in self.cluster.worker_nodes if n.node_id == last["node_id"])
                    self.victim = {"trial": result.parent.name, "node_id": node.node_id,
                                   "epoch_seen": last["epoch"], "pid": last["pid"]}
                    self.cluster.remove_node(node, allow_graceful=False)
                    self.victim["removed_at"] = time.time()
                    return
            time.sleep(0.05)


@pytest.mark.slow
def test_trial_on_a_lost_node_resumes_on_the_other_node(tmp_path, ray_cluster, monkeypatch):
    cluster = ray_cluster
    # the node killer watches the trials' result.json in the storage: Tune copies it there with
    # each experiment snapshot, which is then taken after every result
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "0")
    from tuneloop.config import validate_experiment
    from tuneloop.sweep.paths import experiment_dir
    from tuneloop.sweep.run import run_sweep

    log = tmp_path / "epochs.jsonl"  # every epoch really trained, by any process (tl_testing.EpochLog)
    experiment = probe_experiment(tmp_path, epochs=EPOCHS, num_samples=TRIALS, max_concurrent_trials=TRIALS,
                                  max_failures=2, resources_per_trial={"cpu": 1, "gpu": 1})
    experiment["run"]["net_config"]["delay"] = DELAY
    # every checkpoint stays after the sweep: the lost process's report of an adopted checkpoint can
    # reach the driver's result callbacks while its save task dies with the node, and retention
    # (tuneloop.tune.retention, last keep_last_k by epoch) would then delete that checkpoint at the end
    experiment["run"]["checkpoint_config"].update(save_every_n_epochs=1, keep_last_k=EPOCHS)
    experiment["run"]["early_stopping_config"] = {"enabled": False}
    experiment["run"]["callbacks"] = [{"class": "tl_testing.EpochLog", "path": str(log)}]
    cfg = validate_experiment(experiment, file="lost_node.yaml")
    directory = experiment_dir(cfg)

    workers = {node.node_id for node in cluster.worker_nodes}
    killer = NodeKiller(cluster, directory, KILL_AFTER_EPOCH)
    # a sweep that never finishes (a trial that finds no node) is interrupted like Ctrl-C: Tune
    # stops, run_sweep returns 130 and the test fails instead of hanging
    watchdog = threading.Timer(SWEEP_TIMEOUT_S, _thread.interrupt_main)
    killer.start()
    watchdog.start()
    try:
        status = run_sweep(cfg, address=cluster.address, quiet=True)
    finally:
        watchdog.cancel()
        killer.done.set()
        killer.join(timeout=30)
    assert killer.error is None, repr(killer.error)
    assert killer.victim is not None, "no trial reached the epoch at which its node was to be removed"
    assert status == 0

    lost_node = killer.victim["node_id"]
    (survivor,) = workers - {lost_node}
    histories = {p.parent.name: read_rows(p) for p in sorted(directory.glob("trial_*/result.json"))}
    assert len(histories) == TRIALS
    # after tuneloop's tidy-up every trial has each epoch once, in order
    for name, rows in histories.items():
        assert [r["epoch"] for r in rows] == list(range(EPOCHS)), (name, [r["epoch"] for r in rows])
        assert rows[-1]["trial_done"] and rows[-1]["done_reason"] == "complete"
        assert {r["gpu_ids"] for r in rows} == {"0"} and {r["device"] for r in rows} == {"cpu"}

    # the lost trial: epochs 0..c on the lost node, then c+1.. on the surviving node, in a new process
    rows = histories[killer.victim["trial"]]
    nodes = [r["node_id"] for r in rows]
    assert survivor in nodes, nodes
    resumed_at = nodes.index(survivor)
    assert set(nodes[:resumed_at]) == {lost_node} and set(nodes[resumed_at:]) == {survivor}, nodes
    assert resumed_at > killer.victim["epoch_seen"]
    # a checkpoint every epoch. The state is written in the background into the directory the report
    # names: when the node died after that write but before its report reached the driver, the new
    # process adopts that checkpoint (newer than Tune's) and sends its lost report again, without one
    missing = [r["epoch"] for r in rows if not r.get("checkpoint_dir_name")]
    assert missing in ([], [rows[resumed_at]["epoch"]]), [
        (r["epoch"], r.get("checkpoint_dir_name"), r["resumed_from"], r["node_id"][:6]) for r in rows]
    if missing:
        adopted = directory / killer.victim["trial"] / rows[resumed_at]["resumed_from"]
        assert load_state(adopted)["epoch"] == missing[0]
    # one failure (the node loss), no other: the retry went straight to the surviving node
    failures = (directory / killer.victim["trial"] / "error.txt").read_text()
    assert failures.count("Failure #") == 1, failures
    old_pid, new_pid = rows[0]["pid"], rows[-1]["pid"]
    assert old_pid != new_pid and {r["pid"] for r in rows} == {old_pid, new_pid}
    # the other trial was not touched: one process on the surviving node
    (other,) = set(histories) - {killer.victim["trial"]}
    assert {r["node_id"] for r in histories[other]} == {survivor}
    assert len({r["pid"] for r in histories[other]}) == 1

    # what was really trained: the resumed process starts right after the newest checkpoint (the one
    # the driver got, epoch resumed_at - 1, or the adopted one of epoch resumed_at, whose report the new
    # process sent again), so no epoch before it is retrained; an epoch that the lost process trained
    # after that checkpoint (reported or not) comes out identical when trained again
    first_trained = resumed_at + len(missing)
    lr = rows[0]["lr"]
    assert histories[other][0]["lr"] != lr  # the epoch log tells the trials apart by their lr
    print(f"lost node: {killer.victim}; resumed at epoch {resumed_at}; "
          f"epochs trained by the lost process: {[e['epoch'] for e in read_rows(log) if e['pid'] == old_pid]}")
    trained = [e for e in read_rows(log) if e["params"] == lr]
    before = [e for e in trained if e["pid"] == old_pid]
    after = [e for e in trained if e["pid"] == new_pid]
    assert [e["epoch"] for e in after] == list(range(first_trained, EPOCHS))
    assert [e["epoch"] for e in before] == list(range(len(before)))
    assert first_trained <= len(before) <= first_trained + 1, ([e["epoch"] for e in before], first_trained)
    redone = {e["epoch"]: e["val_loss"] for e in after}
    for e in before[first_trained:]:
        assert e["val_loss"] == redone[e["epoch"]], (e, redone[e["epoch"]])
    assert [r["val_loss"] for r in rows] == [e["val_loss"] for e in before[:first_trained] + after]

    # the study: both trials COMPLETE with one intermediate value per epoch, none RUNNING
    study = optuna.load_study(study_name=cfg.run.name, storage=f"sqlite:///{directory / 'optuna.db'}")
    assert len(study.trials) == TRIALS
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * TRIALS
    lost = next(t for t in study.trials if t.params["optimizer_config.lr"] == rows[0]["config"]["optimizer_config.lr"])
    assert lost.intermediate_values == {r["epoch"]: r["val_loss"] for r in rows}
    assert lost.value == rows[-1]["val_loss"]
    assert (directory / "sweep_done").exists()
