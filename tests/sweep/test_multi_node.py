"""`tuneloop sweep --address` against a running multi-node Ray cluster on this machine (a head
without CPUs and two worker nodes of 1 CPU and 1 fake GPU, `ray.cluster_utils.Cluster`): trials
run on both workers and never on the head, and GPU fractions are honoured per node. A cluster
whose nodes are on two hosts (a worker bound to 127.0.0.2) refuses a local storage_path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from itertools import combinations

import optuna
import pytest
import ray
import yaml

from tl_sweeps import probe_experiment

TRIALS, EPOCHS = 8, 6


def overlapping(a: list[dict], b: list[dict]) -> bool:
    """Whether two trials' training spans (start to last report) overlap in time."""
    return a[0]["started_at"] < b[-1]["reported_at"] and b[0]["started_at"] < a[-1]["reported_at"]


@pytest.mark.slow
def test_a_sweep_launched_on_a_running_cluster_uses_every_worker_and_packs_gpu_fractions(tmp_path, ray_cluster):
    head = ray_cluster.head_node.node_id
    workers = {node.node_id for node in ray_cluster.worker_nodes}
    experiment = probe_experiment(tmp_path, epochs=EPOCHS, num_samples=TRIALS, max_concurrent_trials=TRIALS,
                                  resources_per_trial={"cpu": 0.5, "gpu": 0.5})  # 2 trials per worker node
    experiment["run"]["net_config"]["delay"] = 0.01
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(experiment))
    process = subprocess.run(
        [sys.executable, "-m", "tuneloop.cli", "sweep", "experiment.yaml", "--address", ray_cluster.address, "--quiet"],
        cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stdout + process.stderr

    directory = tmp_path / "results" / "probe"
    histories = {}
    for result in directory.glob("trial_*/result.json"):
        histories[result.parent.name] = [json.loads(line) for line in result.read_text().splitlines() if line]
    assert len(histories) == TRIALS
    nodes = {rows[0]["node_id"] for rows in histories.values()}
    assert nodes == workers and head not in nodes  # both workers, never the head (it has no CPUs)
    for rows in histories.values():
        assert len({r["node_id"] for r in rows}) == 1 and rows[0]["gpu_ids"] == "0"  # a share of its node's GPU
        assert [r["epoch"] for r in rows] == list(range(EPOCHS))
    for node in workers:  # 0.5 GPU each: never more than two trials at once on a node with one GPU
        on_node = [rows for rows in histories.values() if rows[0]["node_id"] == node]
        for trio in combinations(on_node, 3):
            assert not all(overlapping(a, b) for a, b in combinations(trio, 2)), "three trials shared one GPU"
    assert any(overlapping(a, b) for a, b in combinations(list(histories.values()), 2))  # they did run in parallel
    study = optuna.load_study(study_name="probe", storage=f"sqlite:///{directory / 'optuna.db'}")
    assert len(study.trials) == TRIALS and all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


@pytest.fixture
def two_host_cluster(monkeypatch, no_ray_running):
    """A head and one worker that report different host addresses (the worker on 127.0.0.2)."""
    from ray.cluster_utils import Cluster

    temp_dir = tempfile.mkdtemp(prefix="tlmh-", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", temp_dir)  # the cluster's address file stays in this dir
    os.mkdir(os.path.join(temp_dir, "ray"))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "temp_dir": os.path.join(temp_dir, "ray")})
    try:
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.2")
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_a_local_storage_path_on_a_cluster_of_several_hosts_is_refused_before_training(tmp_path, capsys,
                                                                                       two_host_cluster):
    from tuneloop import cli

    experiment = probe_experiment(tmp_path)
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(experiment))
    assert cli.main(["sweep", str(tmp_path / "experiment.yaml"), "--address", two_host_cluster.address,
                     "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "sweep.storage_path: must be shared by all 2 hosts of the cluster" in err
    assert str(tmp_path / "results") in err and "s3://bucket/prefix" in err
    assert not (tmp_path / "results").exists()  # nothing written
    assert not ray.is_initialized()  # the driver left the cluster
