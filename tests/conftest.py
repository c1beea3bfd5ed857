"""Test-wide settings and fixtures.

- W&B offline and silent.
- `ray_local`: a real local Ray of 2 CPUs in its own temp dir, shut down by the fixture (never
  `ray stop`); `ray_cluster`: a real multi-node Ray (head without CPUs, two workers of 1 CPU and
  1 fake GPU). `tests/support` is on PYTHONPATH so trials can import it.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_DISABLE_GIT", "true")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

REPO = Path(__file__).resolve().parents[1]
SUPPORT = REPO / "tests" / "support"
sys.path.insert(0, str(SUPPORT))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SUPPORT), os.environ.get("PYTHONPATH")]))


@pytest.fixture
def repo_root() -> Path:
    return REPO


def start_ray(**kwargs):
    """ray.init in a fresh short temp dir (Unix socket paths must stay short); returns the dir."""
    import ray

    temp_dir = tempfile.mkdtemp(prefix="tlray-", dir="/tmp")
    ray.init(address="local", num_cpus=kwargs.pop("num_cpus", 2), include_dashboard=False, _temp_dir=temp_dir,
             configure_logging=False, log_to_driver=False, **kwargs)
    return temp_dir


def stop_ray(temp_dir):
    import ray

    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray with 2 CPUs for the tests of one module."""
    temp_dir = start_ray()
    yield
    stop_ray(temp_dir)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: intra-op threads only contend (on a loaded 2-core box, 10x slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's digits as (train, val) TensorDatasets."""
    from tuneloop.recipes.digits import load_data

    return load_data()


@pytest.fixture
def ray_cluster(monkeypatch):
    """Head (0 CPUs) + 2 workers (1 CPU, 1 fake GPU each) in a short temp dir of their own."""
    import ray
    from ray.cluster_utils import Cluster

    assert not ray.is_initialized(), "another test left Ray running: the sweep would not join this cluster"
    temp_dir = tempfile.mkdtemp(prefix="tlln-", dir="/tmp")
    # Cluster writes its address to <RAY_TMPDIR or /tmp>/ray/ray_current_cluster, where any plain
    # `ray.init()` on this machine would find it and join: keep it inside this test's dir
    monkeypatch.setenv("RAY_TMPDIR", temp_dir)
    ray_dir = os.path.join(temp_dir, "ray")  # Ray's default layout under RAY_TMPDIR
    os.mkdir(ray_dir)
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "temp_dir": ray_dir,
            # a removed node is declared dead after ~5 s of missed health checks (default: 15 s and
            # more); lenient enough that a busy 2-core machine does not lose a live node
            "_system_config": {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000,
                               "health_check_timeout_ms": 1000, "health_check_failure_threshold": 5}})
        for _ in range(2):
            cluster.add_node(num_cpus=1, num_gpus=1)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()  # only if the sweep left the driver connected (normally it disconnects itself)
        if cluster is not None:
            cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def leftover_ray_processes(ray_tmp: str) -> list[int]:
    """Pids of the processes whose command line names `ray_tmp` (the Ray a test started there)."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if ray_tmp in line]


def ray_processes_after(ray_tmp: str, timeout: float = 30.0) -> list[int]:
    """The Ray processes of `ray_tmp` still alive `timeout` s after its driver was killed (none,
    normally): each exits once it notices its raylet is gone, sooner or later on a loaded machine."""
    deadline = time.monotonic() + timeout
    while (left := leftover_ray_processes(ray_tmp)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@pytest.fixture
def ray_tmp():
    """A short temp dir for the Ray of `tuneloop` subprocesses (RAY_TMPDIR); what is left of that
    Ray afterwards (and only that) is killed by pid."""
    path = tempfile.mkdtemp(prefix="tlr-", dir="/tmp")
    yield path
    for pid in leftover_ray_processes(path):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(path, ignore_errors=True)
