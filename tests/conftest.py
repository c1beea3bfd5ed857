"""Test-wide settings and fixtures.

- W&B offline and silent.
- `ray_local`: a real local Ray of 2 CPUs in its own temp dir, shared by the tests that use it and
  shut down by the session (never `ray stop`); `no_ray_running` for a test that needs none;
  `ray_cluster`: a real multi-node Ray (head without CPUs, two workers of 1 CPU and 1 fake GPU).
- `ray_tmp`: the Ray temp dir of `tuneloop` subprocesses, whose leftovers are killed by pid.
- `s3_endpoint`: a moto S3 server on 127.0.0.1 with an empty bucket.
- `tests/support` (helpers) is on sys.path and PYTHONPATH, so trials can import it too.
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

from tl_ray import leftover_ray_processes, start_ray, stop_ray  # noqa: E402  (support/ is on the path now)
from tl_s3 import BUCKET, CREDENTIALS, free_port  # noqa: E402


@pytest.fixture
def repo_root() -> Path:
    return REPO


class SharedRay:
    """One local Ray (2 CPUs, a short temp dir of its own) for every test of the session that can
    share it (`ray_local`): started by the first that asks, kept across modules; stopped for a test
    that needs none running in this process (`no_ray_running`), started again by the next."""

    def __init__(self):
        self.temp_dir = None

    def up(self) -> None:
        import ray

        if self.temp_dir is None:
            assert not ray.is_initialized(), "a test left its own Ray running"
            self.temp_dir = start_ray()

    def down(self) -> None:
        if self.temp_dir is not None:
            stop_ray(self.temp_dir)
            self.temp_dir = None


@pytest.fixture(scope="session")
def shared_ray():
    shared = SharedRay()
    yield shared
    shared.down()


@pytest.fixture
def ray_local(shared_ray):
    """A local Ray with 2 CPUs, shared with the other tests that use it."""
    shared_ray.up()


@pytest.fixture
def no_ray_running(shared_ray):
    """No Ray runs in this process when the test starts (it starts its own, or checks none starts)."""
    shared_ray.down()


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
def ray_cluster(monkeypatch, no_ray_running):
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


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 with an empty bucket; AWS credentials set for this process."""
    import boto3

    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    try:
        client = boto3.client("s3", endpoint_url=endpoint)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.create_bucket(Bucket=BUCKET)
                break
            except Exception:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.2)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


RAY_FIXTURES = {"ray_local", "shared_ray", "ray_tmp", "ray_cluster", "ray_with_fake_gpus", "two_host_cluster"}


def pytest_collection_modifyitems(config, items):
    """`ray` marks every test that starts or joins a Ray (through one of RAY_FIXTURES, or marked by
    hand): `pytest -m "not ray"` runs the rest in seconds. The `slow` tests go first (in their
    order), so that the xdist workers share out the long ones early instead of one ending alone on
    a long test while the others are idle (the order is not one any test relies on)."""
    for item in items:
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.ray)
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: otherwise in file order
