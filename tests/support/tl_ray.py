"""Ray for tests: a local Ray in a short temp dir of its own, shut down by pid-safe means (never
`ray stop`), and which processes a test's Ray left behind."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time


def start_ray(**kwargs):
    """ray.init in a fresh short temp dir (Unix socket paths must stay short); returns the dir. As
    a sweep's own Ray (tuneloop.tune.session.ensure_ray): its workers read Tune's settings (thread
    timeouts) as they start, and Tune's trials inherit their environment from it, so that each
    trial's worker is a plain one (see session.trials_inherit_environment); `stop_ray` undoes that."""
    import ray

    from tuneloop.tune.session import apply_tune_settings, trials_inherit_environment

    apply_tune_settings()
    temp_dir = tempfile.mkdtemp(prefix="tlray-", dir="/tmp")
    with trials_inherit_environment({}):
        ray.init(address="local", num_cpus=kwargs.pop("num_cpus", 2), include_dashboard=False, _temp_dir=temp_dir,
                 configure_logging=False, log_to_driver=False, **kwargs)
    return temp_dir


def stop_ray(temp_dir):
    """Stop it as a sweep stops its own Ray (tuneloop.tune.session.stop_ray: Tune's trial runtime_env
    given back, for a Ray joined later) and remove its temp dir."""
    from tuneloop.tune import session

    session.stop_ray()
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
