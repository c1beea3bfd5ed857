"""`tuneloop dashboard`: optuna-dashboard on a sweep's real SQLite study, bound to 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
import yaml

from tl_sweeps import probe_experiment
from tuneloop import cli

pytest.importorskip("optuna_dashboard")


def sweep_directory(tmp_path) -> Path:
    """A sweep's directory as `tuneloop sweep` leaves it: experiment.yaml and the study in optuna.db."""
    directory = tmp_path / "results" / "probe"
    directory.mkdir(parents=True)
    (directory / "experiment.yaml").write_text(yaml.safe_dump(probe_experiment(tmp_path)))
    study = optuna.create_study(study_name="probe", storage=f"sqlite:///{directory / 'optuna.db'}")
    for value in (0.5, 0.25, 0.125):
        trial = study.ask({"optimizer_config.lr": optuna.distributions.FloatDistribution(1e-3, 0.1, log=True)})
        study.tell(trial, value)
    return directory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_dashboard_serves_the_sweeps_study(tmp_path):
    directory, port = sweep_directory(tmp_path), free_port()
    tuneloop = Path(sys.executable).with_name("tuneloop")
    server = subprocess.Popen([str(tuneloop), "dashboard", str(directory), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        assert f"http://127.0.0.1:{port}/dashboard/studies/1" in line and "3 trials" in line, line
        studies = get(port, "/api/studies", server)["study_summaries"]
        assert [(s["study_id"], s["study_name"], s["directions"]) for s in studies] == [(1, "probe", ["minimize"])]
        detail = get(port, "/api/studies/1", server)
        assert [t["values"] for t in detail["trials"]] == [[0.5], [0.25], [0.125]]
        assert [t["values"] for t in detail["best_trials"]] == [[0.125]]
        with pytest.raises(OSError):  # bound to 127.0.0.1 only
            socket.create_connection((_other_address(), port), timeout=2).close()
    finally:
        os.kill(server.pid, signal.SIGINT)
        status = server.wait(timeout=30)
    assert status == 0  # Ctrl-C ends it cleanly


def get(port: int, path: str, server, wait_s: float = 60) -> dict:
    """GET a JSON path of the dashboard, waiting for it to come up."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                return json.load(response)
        except OSError:
            assert server.poll() is None, server.stderr.read()
            assert time.monotonic() < deadline, f"no answer on port {port} after {wait_s} s"
            time.sleep(0.2)


def _other_address() -> str:
    """An address of this machine other than the loopback (skip when it has none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent: picks the outgoing interface
            address = s.getsockname()[0]
        except OSError:
            address = "127.0.0.1"
    if address.startswith("127."):
        pytest.skip("this machine has no address but the loopback")
    return address


def test_a_port_in_use_is_refused_before_serving(tmp_path, capsys):
    directory = sweep_directory(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        status = cli.main(["dashboard", str(directory), "--port", str(taken.getsockname()[1])])
    err = capsys.readouterr().err
    assert status == 2
    assert "--port: must be a free port on 127.0.0.1" in err and "Traceback" not in err


def test_a_directory_without_a_sweep_is_refused(tmp_path, capsys):
    status = cli.main(["dashboard", str(tmp_path)])
    assert status == 2
    assert "is not a tuneloop sweep directory" in capsys.readouterr().err
