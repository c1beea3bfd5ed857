"""Trials on several Ray Train workers (`sweep.resources_per_trial.workers`, tuneloop.tune.distributed)
on a real Ray: 2 workers x 0.5 CPU, gloo. Each Train run costs ~12 s of start-up on 2 cores, so
these run as their own group (`pytest -m distributed`, excluded from the default run) and combine
their checks into as few sweeps as they can."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import time
from pathlib import Path

import optuna
import pytest
import yaml

from tl_ray import ray_processes_after
from tl_s3 import BUCKET, objects
from tl_sweeps import launch, launch_until_gated, probe_experiment, run_sweep, running, study_of, trial_rows
from tuneloop import cli
from tuneloop.tune.distributed import state_api_installed

pytestmark = [pytest.mark.distributed, pytest.mark.ray, pytest.mark.slow,
              pytest.mark.skipif(not state_api_installed(), reason="needs the distributed extra (ray[default]): "
                                 "pip install -e '.[distributed]' -c requirements/constraints.txt")]

WORKERS = {"workers": 2, "cpu": 0.5, "gpu": 0}


def distributed_experiment(tmp_path, **sweep) -> dict:
    """The probe experiment with 2 workers per trial, a checkpoint every epoch, 4 epochs."""
    experiment = probe_experiment(tmp_path, epochs=4, **{"resources_per_trial": WORKERS, **sweep})
    experiment["run"]["checkpoint_config"]["save_every_n_epochs"] = 1
    return experiment


def csv_epochs(trial_dir) -> list[int]:
    lines = (trial_dir / "metrics.csv").read_text().splitlines()[1:]
    return [int(line.split(",")[0]) for line in lines]


def test_an_asha_sweep_of_distributed_trials_prunes_frees_their_workers_and_survives_a_killed_worker(
        tmp_path, capsys, monkeypatch, ray_tmp, no_ray_running):
    """3 trials of 2 workers on 2 CPUs: one at a time fits (the cap is printed). ASHA stops the bad
    trial, whose workers learn of it and end as pruned, and the next one still starts (a stopped
    trial's placement group would hold the CPUs it needs). A worker SIGKILLed at the start of epoch 2 of the first trial: Ray Train restarts the
    group from its last registered checkpoint and the trial's history stays contiguous. Rank 0 alone writes
    metrics.csv and the checkpoints (through Ray Train, in the trial's `train/`); the study is truthful."""
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    experiment = distributed_experiment(
        tmp_path, num_samples=3, max_concurrent_trials=2, max_failures=1,
        scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 2},
        sampler={"name": "RandomSampler", "seed": 6},  # lr: good, bad, good
        search_space={"optimizer_config.lr": {"type": "categorical", "choices": [0.05, 0.00001]}})
    marker = tmp_path / "killed"
    ends = tmp_path / "ends.jsonl"
    experiment["run"]["callbacks"] = [{"class": "tl_chaos.KillRank", "rank": 1, "epoch": 2, "marker": str(marker)},
                                      {"class": "tl_chaos.PacedEnds", "path": str(ends), "slow_below_lr": 1e-3,
                                       "seconds": 1.0}]
    status, directory = run_sweep(tmp_path, experiment)
    out = capsys.readouterr().out
    assert status == 0, out
    assert "sweep.max_concurrent_trials=2 lowered to 1" in out
    trials = study_of(directory).trials
    states = sorted(t.state.name for t in trials)
    assert states == ["COMPLETE", "COMPLETE", "PRUNED"], out  # all 3 ran: the stopped one freed its workers
    rows = trial_rows(directory)
    for trial in trials:
        trial_rows_ = next(r for r in rows.values() if r[0]["config"]["optimizer_config.lr"] ==
                           trial.params["optimizer_config.lr"] and [x["val_loss"] for x in r] ==
                           [trial.intermediate_values[s] for s in sorted(trial.intermediate_values)])
        assert [r["epoch"] for r in trial_rows_] == list(range(len(trial_rows_)))  # contiguous, no repeats
        assert {r["workers"] for r in trial_rows_} == {2}
        if trial.state.name == "COMPLETE":
            assert len(trial_rows_) == 4 and trial_rows_[-1]["trial_done"]
    # the STOP reached the pruned trial's workers (rank 0 reads it after a report, all ranks agree):
    # both ended as pruned, on_train_end fired, before their last epoch
    pruned = [json.loads(line) for line in ends.read_text().splitlines() if json.loads(line)["lr"] < 1e-3]
    assert sorted(end["rank"] for end in pruned) == [0, 1], pruned
    assert {end["stop_reason"] for end in pruned} == {"pruned"} and all(len(end["epochs"]) < 4 for end in pruned)
    assert marker.exists()  # the worker was killed once ...
    killed = next(d for d in directory.glob("trial_*") if any(r.get("resumed_from") for r in rows[d.name]))
    resumed = [(r["epoch"], r["resumed_from"]) for r in rows[killed.name] if r["resumed_from"]]
    # ... and its group restarted from the last checkpoint Ray Train had registered: epoch 1's, or epoch 0's
    # when the worker died before the controller's next poll collected epoch 1's report
    first, checkpoint = resumed[0]
    assert first in (1, 2) and checkpoint == f"checkpoint_{first - 1:06d}", resumed
    assert {name for _, name in resumed} == {checkpoint} and resumed[-1][0] == 3
    for trial_dir in directory.glob("trial_*"):
        assert csv_epochs(trial_dir)[:len(rows[trial_dir.name])] == [r["epoch"] for r in rows[trial_dir.name]]
        assert sorted(p.name for p in (trial_dir / "train").glob("checkpoint_*"))  # Ray Train kept them
    assert ray_processes_after(ray_tmp) == []


def test_pfl_stops_distributed_trials_whose_workers_end_and_free_their_cpus(tmp_path, capsys, monkeypatch, ray_tmp,
                                                                           no_ray_running):
    """tuneloop's pfl (its sweep defaults: shifted-exponential predictions calibrated by the completed
    trials) on 3 trials of 2 workers, one at a time. With k=1, n_startup_trials=1, n_warmup_epochs=1,
    once the first trial (lr 0.05: RandomSampler seed 11 draws 0.05, 1e-5, 1e-5) completed with final
    F, a later trial is judged after its first epoch: a first loss L0 becomes L0 x F / L0' (L0' the
    first trial's own first loss, predicted alike), stopped when above F, i.e. when L0 > L0'. Both
    lr 1e-5 trials start from the same model (seed 0) and barely move it: stopped for certain (the
    test checks L0 > L0' too). Their workers learn of it, end as pruned before their last epoch, and
    free their CPUs (the third trial needs them to start); the study says PRUNED with each
    intermediate value, the histories are contiguous."""
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    experiment = distributed_experiment(
        tmp_path, num_samples=3, max_concurrent_trials=2,
        scheduler={"name": "pfl", "k": 1, "n_startup_trials": 1, "n_warmup_epochs": 1},
        sampler={"name": "RandomSampler", "seed": 11},
        search_space={"optimizer_config.lr": {"type": "categorical", "choices": [0.05, 0.00001]}})
    ends = tmp_path / "ends.jsonl"
    # a stopped trial's workers learn of it after a report: 1 s epochs let that happen before the last one
    experiment["run"]["callbacks"] = [{"class": "tl_chaos.PacedEnds", "path": str(ends), "slow_below_lr": 1e-3,
                                       "seconds": 1.0}]
    status, directory = run_sweep(tmp_path, experiment)
    out = capsys.readouterr().out
    assert status == 0, out
    trials = sorted(study_of(directory).trials, key=lambda t: t.number)
    assert [t.params["optimizer_config.lr"] for t in trials] == [0.05, 0.00001, 0.00001]
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED", "PRUNED"], out  # the third started: CPUs freed
    rows = trial_rows(directory)
    histories = sorted(rows.values(), key=lambda r: r[0]["config"]["optimizer_config.lr"], reverse=True)
    assert len(histories) == 3
    for trial, history in zip(trials, histories):  # the two stopped trials trained alike: either order
        assert history[0]["config"]["optimizer_config.lr"] == trial.params["optimizer_config.lr"]
        values = [trial.intermediate_values[s] for s in sorted(trial.intermediate_values)]
        assert [r["val_loss"] for r in history] == values
        assert [r["epoch"] for r in history] == list(range(len(history)))  # contiguous, no repeats
        assert {r["workers"] for r in history} == {2}
    complete, *pruned = histories
    assert len(complete) == 4 and complete[-1]["trial_done"]
    for history in pruned:  # stopped at its first result, the one pfl judged
        assert len(history) == 1 and not history[-1]["trial_done"]
        assert history[0]["val_loss"] > complete[0]["val_loss"]  # L0 > L0': the stop's condition held
    state = json.loads((directory / "pfl_state.json").read_text())
    assert len(state["finals"]) == 1 and len(state["stopped"]) == 2
    # both ranks of each stopped trial ended as pruned (on_train_end), before their last epoch
    ended = [json.loads(line) for line in ends.read_text().splitlines()]
    stopped = [end for end in ended if end["lr"] < 1e-3]
    assert sorted(end["rank"] for end in stopped) == [0, 0, 1, 1], ended
    assert {end["stop_reason"] for end in stopped} == {"pruned"} and all(len(end["epochs"]) < 4 for end in stopped)
    assert ray_processes_after(ray_tmp) == []


def test_a_two_node_cluster_runs_a_trials_workers_on_different_nodes(ray_cluster, tmp_path, monkeypatch):
    """`ray.cluster_utils.Cluster`: a head without CPUs and two nodes of 1 CPU (the fixture); workers of
    0.75 CPU cannot share a node, so rank 0 and rank 1 train on different nodes, as one trial."""
    experiment = distributed_experiment(tmp_path, num_samples=1, max_concurrent_trials=1,
                                        resources_per_trial={"workers": 2, "cpu": 0.75, "gpu": 0},
                                        scheduler={"name": "fifo"})
    experiment["run"]["epochs"] = 2
    experiment["run"]["callbacks"] = [{"class": "tl_chaos.RankLog", "path": str(tmp_path / "ranks.jsonl")}]
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(experiment))
    status = cli.main(["sweep", str(path), "--quiet", "--address", ray_cluster.address])
    assert status == 0
    logged = [json.loads(line) for line in (tmp_path / "ranks.jsonl").read_text().splitlines()]
    assert sorted((row["rank"], row["epoch"]) for row in logged) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    nodes = {row["rank"]: row["node"] for row in logged}
    assert nodes[0] != nodes[1]  # one trial, two nodes
    directory = tmp_path / "results" / "probe"
    (rows,) = trial_rows(directory).values()
    assert [r["epoch"] for r in rows] == [0, 1] and rows[-1]["trial_done"]
    assert study_of(directory).trials[0].state == optuna.trial.TrialState.COMPLETE


def test_a_killed_driver_and_tuneloop_resume_continue_a_distributed_trial_from_its_checkpoint(tmp_path, ray_tmp):
    """The driver SIGKILLed while both ranks wait at the start of epoch 2 (the Train run's checkpoint
    of epoch 1 written): nothing of its Ray is left, and `tuneloop resume` continues the trial from
    that checkpoint — every epoch trained once per rank, a contiguous history, a COMPLETE trial."""
    gate, log = tmp_path / "gate", tmp_path / "ranks.jsonl"
    gate.touch()
    experiment = distributed_experiment(tmp_path, num_samples=1, max_concurrent_trials=1, scheduler={"name": "fifo"})
    experiment["run"]["callbacks"] = [{"class": "tl_chaos.RankLog", "path": str(log)},
                                      {"class": "tl_chaos.Gate", "gate": str(gate), "from_epoch": 2}]
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(experiment))
    directory = tmp_path / "results" / "probe"

    driver = launch_until_gated(path, gate, ray_tmp, tmp_path, waiters=2)  # both ranks at the gate
    deadline = time.monotonic() + 180
    while not any(len(r) >= 2 for r in trial_rows(directory).values()) and time.monotonic() < deadline:
        time.sleep(0.05)  # epoch 1's report reached Tune: Ray Train registered its checkpoint
    os.kill(driver.pid, signal.SIGKILL)
    driver.communicate(timeout=60)
    assert ray_processes_after(ray_tmp) == []
    held = [int(line.split()[0]) for line in Path(f"{gate}.waits").read_text().splitlines()]
    deadline = time.monotonic() + 60
    while any(running(pid) for pid in held) and time.monotonic() < deadline:
        time.sleep(0.1)  # a worker outlives its raylet a little; opened now, it would train on
    assert not any(running(pid) for pid in held)
    gate.unlink()

    resume = launch(["resume", str(directory)], ray_tmp, tmp_path)
    output, _ = resume.communicate(timeout=300)
    assert resume.returncode == 0, output
    trained = [json.loads(line) for line in log.read_text().splitlines()]
    for rank in (0, 1):
        assert [row["epoch"] for row in trained if row["rank"] == rank] == [0, 1, 2, 3]  # none twice, none lost
    [rows] = trial_rows(directory).values()
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3] and rows[-1]["done_reason"] == "complete"
    assert [r.get("resumed_from") for r in rows[2:]] == ["checkpoint_000001"] * 2  # 0 and 1: replayed to Tune
    [trial] = study_of(directory).trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == rows[-1]["val_loss"]
    assert [trial.intermediate_values[e] for e in range(4)] == [r["val_loss"] for r in rows]
    assert csv_epochs(next(directory.glob("trial_*"))) == [0, 1, 2, 3]


def test_a_two_node_trial_on_s3_stores_rank_zeros_files_and_its_checkpoints_in_the_bucket(
        ray_cluster, s3_endpoint, tmp_path, monkeypatch):
    """The two-node cluster with the sweep's storage on S3 (a moto server): rank 0 writes metrics.csv
    into its own scratch directory and puts it into the trial's directory in the bucket itself,
    since on a cluster of several hosts it may run on another host than the Tune trial, whose local
    working directory (what Ray syncs) is then out of its reach. Ray Train's checkpoints, Tune's
    result.json and the driver's files are in the bucket; the study is truthful."""
    monkeypatch.chdir(tmp_path)  # the driver's local copy of an S3 sweep (results/probe) goes here
    experiment = distributed_experiment(tmp_path, num_samples=1, max_concurrent_trials=1, scheduler={"name": "fifo"},
                                        resources_per_trial={"workers": 2, "cpu": 0.75, "gpu": 0},
                                        storage_path=f"s3://{BUCKET}/dist", s3_endpoint=s3_endpoint)
    experiment["run"]["epochs"] = 3
    experiment["run"]["callbacks"] = [{"class": "tl_chaos.RankLog", "path": str(tmp_path / "ranks.jsonl")}]
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(experiment))
    assert cli.main(["sweep", str(path), "--quiet", "--address", ray_cluster.address]) == 0

    logged = [json.loads(line) for line in (tmp_path / "ranks.jsonl").read_text().splitlines()]
    nodes = {row["rank"]: row["node"] for row in logged}
    assert nodes[0] != nodes[1]  # one trial, two nodes
    stored = objects(s3_endpoint, "dist/probe/")
    assert {"experiment.yaml", "optuna.db", "results.csv", "sweep_done"} <= set(stored)
    [trial] = {key.split("/")[0] for key in stored if key.startswith("trial_")}
    rows = [json.loads(line) for line in stored[f"{trial}/result.json"].decode().splitlines() if line.strip()]
    assert [r["epoch"] for r in rows] == [0, 1, 2] and rows[-1]["done_reason"] == "complete"
    table = list(csv.DictReader(io.StringIO(stored[f"{trial}/metrics.csv"].decode())))
    assert [int(r["epoch"]) for r in table] == [0, 1, 2]
    assert [float(r["val_loss"]) for r in table] == pytest.approx([r["val_loss"] for r in rows])
    assert any(key.startswith(f"{trial}/train/checkpoint_") and key.endswith("/state.pt") for key in stored)
    # nothing of rank 0's went through a host's local directories of the trial (under the cluster's
    # Ray temp dir): on several hosts, those of the Tune trial's host are not rank 0's
    assert not list(Path(os.environ["RAY_TMPDIR"]).rglob("metrics.csv"))
    [study_trial] = study_of(tmp_path / "results" / "probe").trials
    assert study_trial.state == optuna.trial.TrialState.COMPLETE and study_trial.value == rows[-1]["val_loss"]
