"""Test-wide settings and fixtures.

- W&B offline and silent.
- `ray_start`: a real local Ray of 2 CPUs (optionally fake GPUs) in its own temp dir, shut down
  by the fixture (never `ray stop`). `tests/support` is on PYTHONPATH so trials can import it.
"""

import os
import shutil
import sys
import tempfile
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
