"""`tuneloop doctor`: the machine's facts, a running cluster's resources, warnings."""

from __future__ import annotations

import importlib.util
import platform
import sys

import ray
import torch

from tuneloop import cli


def test_doctor_prints_the_stack_and_warns_about_online_wandb_without_a_key(capsys, monkeypatch, tmp_path,
                                                                           no_ray_running):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login either
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    facts = dict(line.split(":", 1) for line in out.splitlines() if not line.startswith("warning:"))
    assert platform.python_version() in facts["python"]
    assert facts["torch"].strip() == torch.__version__ and facts["ray"].strip() == ray.__version__
    assert facts["wandb mode"].strip() == "online"
    installed = all(importlib.util.find_spec(m) for m in ("aiohttp", "aiohttp_cors", "opencensus"))  # ray[default]'s
    assert facts["ray State API"].strip() == ("installed (ray[default])" if installed else "missing")
    assert ("pip install 'tuneloop[distributed]'" in out) != installed  # the extra for distributed trials
    assert ("GPUs" in facts) != torch.cuda.is_available()
    import mlflow  # the dev extra's: the trackers of sweep.loggers
    import tensorboardX

    assert facts["mlflow"].strip() == mlflow.__version__ and facts["tensorboardX"].strip() == tensorboardX.__version__
    assert "warning: WANDB_MODE=online but no WANDB_API_KEY" in out
    assert not ray.is_initialized()  # without --address nothing of Ray is started


def test_doctor_names_the_extra_of_a_missing_tracker(capsys, monkeypatch, no_ray_running):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` fails, as without the extra
    assert cli.main(["doctor"]) == 0
    facts = dict(line.split(":", 1) for line in capsys.readouterr().out.splitlines() if not line.startswith("warning:"))
    assert facts["mlflow"].strip() == ("not installed (sweep.loggers: [mlflow] needs it: "
                                       "pip install 'tuneloop[mlflow]')")


def test_doctor_lists_the_nodes_of_a_running_cluster(capsys, ray_cluster):
    assert cli.main(["doctor", "--address", ray_cluster.address]) == 0
    out = capsys.readouterr().out
    assert "3 node(s) on 1 host(s): 2 CPUs, 2 GPUs" in out  # head without CPUs, two 1-CPU 1-GPU workers
    for node in ray_cluster.worker_nodes:
        assert f"node {node.node_id[:8]}:" in out
    assert not ray.is_initialized()  # doctor left the cluster again
