"""Shared storage: a sweep whose `storage_path` is `s3://bucket/prefix`, against a real S3 API
server (moto_server on 127.0.0.1, started and stopped by pid here): trials write and resume from
checkpoints stored there, and an interrupted sweep resumes from its s3:// URI on a machine that
has none of its local files."""

from __future__ import annotations

import json
import os
import shutil

import optuna
import pytest
import yaml

from tl_s3 import BUCKET, objects
from tl_sweeps import interrupt_after, launch, probe_experiment

EPOCHS, TRIALS = 6, 2


@pytest.mark.slow
def test_a_sweep_on_s3_resumes_from_its_uri_with_trials_resuming_from_s3_checkpoints(tmp_path, s3_endpoint, ray_tmp):
    log, markers = tmp_path / "epochs.jsonl", tmp_path / "markers"
    experiment = probe_experiment(tmp_path, epochs=EPOCHS, num_samples=TRIALS, max_concurrent_trials=1,
                                  max_failures=1, storage_path=f"s3://{BUCKET}/sweeps", s3_endpoint=s3_endpoint)
    experiment["run"]["net_config"]["delay"] = 0.01
    experiment["run"]["checkpoint_config"]["save_every_n_epochs"] = 1
    experiment["run"]["callbacks"] = [
        {"class": "tl_faults.FailOnce", "marker_dir": str(markers), "epoch": 3},  # every trial crashes once
        {"class": "tl_testing.EpochLog", "path": str(log)}]
    machine_a, machine_b = tmp_path / "a", tmp_path / "b"
    machine_a.mkdir()
    machine_b.mkdir()
    (machine_a / "experiment.yaml").write_text(yaml.safe_dump(experiment))

    # machine A: the sweep, interrupted once a few epochs are done (SIGINT: Tune saves its state)
    interrupt_after(["sweep", "experiment.yaml", "--quiet"], log, 8, ray_tmp, machine_a)
    assert not list((machine_a / "results" / "probe").glob("trial_*"))  # trials live in the bucket only
    stored = objects(s3_endpoint, "sweeps/probe/")
    assert {"experiment.yaml", "optuna.db", "results.csv"} <= set(stored)  # the driver's files, uploaded
    assert any("/checkpoint_" in key and key.endswith("/state.pt") for key in stored)

    # machine B: nothing local; resume from the URI (endpoint from the standard AWS variable)
    os.environ["AWS_ENDPOINT_URL"] = s3_endpoint
    try:
        resume = launch(["resume", f"s3://{BUCKET}/sweeps/probe"], ray_tmp, machine_b)
        output, _ = resume.communicate(timeout=240)
    finally:
        del os.environ["AWS_ENDPOINT_URL"]
    assert resume.returncode == 0, output
    assert (machine_b / "results" / "probe" / "optuna.db").is_file()

    stored = objects(s3_endpoint, "sweeps/probe/")
    histories = {}
    for key, data in stored.items():
        if key.endswith("/result.json"):
            histories[key.split("/")[0]] = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
    assert len(histories) == TRIALS
    for trial, rows in histories.items():
        assert [r["epoch"] for r in rows] == list(range(EPOCHS)), trial  # contiguous after both resumes
        # crashed at the start of epoch 3 and resumed from the epoch-2 checkpoint read from S3
        assert rows[-1]["resumed_from"].startswith("checkpoint_"), trial
        assert any(key.startswith(f"{trial}/checkpoint_") for key in stored)
    assert len(list(markers.iterdir())) == TRIALS
    assert b"sweep_done" not in stored.get("results.csv", b"") and "sweep_done" in stored
    study = optuna.load_study(study_name="probe", storage=f"sqlite:///{machine_b / 'results' / 'probe' / 'optuna.db'}")
    assert len(study.trials) == TRIALS
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def test_a_missing_bucket_is_refused_before_ray_starts(tmp_path, s3_endpoint, capsys):
    from tuneloop import cli

    experiment = probe_experiment(tmp_path, storage_path="s3://no-such-bucket/sweeps", s3_endpoint=s3_endpoint)
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(experiment))
    assert cli.main(["sweep", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "sweep.storage_path" in err and "the bucket 'no-such-bucket' does not exist" in err
    assert not (tmp_path / "results").exists()
    shutil.rmtree(tmp_path / "results", ignore_errors=True)
