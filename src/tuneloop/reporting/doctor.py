"""`tuneloop doctor`: what this machine (and, with `--address`, the cluster) offers a sweep, and
what would make one fail: printed as `name: value` lines, then `warning:` lines."""

from __future__ import annotations

import os
import platform
import shutil
import sys


def facts() -> tuple[list[tuple[str, str]], list[str]]:
    """(name, value) lines about the local machine, and warnings."""
    import torch

    lines, warnings = [], []
    lines.append(("python", f"{platform.python_version()} ({sys.executable})"))
    lines.append(("torch", torch.__version__))
    cuda_build = torch.version.cuda
    lines.append(("CUDA build", cuda_build or "none (CPU-only torch)"))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        lines.append(("CUDA_VISIBLE_DEVICES", visible or "(empty: no GPU visible)"))
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            lines.append((f"GPU {index}", f"{props.name}, {props.total_memory / 2**30:.1f} GiB"))
    else:
        lines.append(("GPUs", "none usable by torch"))
        if _nvidia_present():
            warnings.append("an NVIDIA driver is present but torch sees no GPU: "
                            + ("torch is a CPU-only build (install the CUDA build: pip install torch==<version>)"
                               if not cuda_build else "check CUDA_VISIBLE_DEVICES and the driver version"))
    import ray

    lines.append(("ray", ray.__version__))
    from tuneloop.tune.distributed import state_api_installed

    state_api = state_api_installed()
    lines.append(("ray State API", "installed (ray[default])" if state_api else "missing"))
    if not state_api:
        warnings.append("Ray's State API is missing (pip install 'tuneloop[distributed]'): a distributed trial "
                        "(sweep.resources_per_trial.workers > 1) stopped by a scheduler would keep its "
                        "workers' CPUs held, and later trials would never start")
    from tuneloop.tune.loggers import installed

    lines.append(("tensorboardX", _version("tensorboardX") if installed("tensorboardX") else
                  "not installed (sweep.loggers: [tensorboard] needs it: pip install 'ray[tune]')"))
    lines.append(("mlflow", _version("mlflow") if installed("mlflow") else
                  "not installed (sweep.loggers: [mlflow] needs it: pip install 'tuneloop[mlflow]')"))
    try:
        import optuna

        lines.append(("optuna", optuna.__version__))
    except ImportError:  # pragma: no cover - a dependency
        warnings.append("optuna is not installed")
    from tuneloop.tune._compat import WRITTEN_FOR, version_warnings

    lines.append(("written for", ", ".join(f"{name} >={'.'.join(map(str, low))},<{'.'.join(map(str, high))}"
                                           for name, (low, high) in WRITTEN_FOR.items())))
    warnings += version_warnings()
    mode = os.environ.get("WANDB_MODE") or "(unset: the experiment's wandb_config.mode decides)"
    lines.append(("wandb mode", mode))
    if os.environ.get("WANDB_MODE") == "online" and not (os.environ.get("WANDB_API_KEY") or _netrc_has_wandb()):
        warnings.append("WANDB_MODE=online but no WANDB_API_KEY and no wandb login: runs with wandb enabled will fail")
    auth = os.environ.get("RAY_AUTH_MODE")
    lines.append(("RAY_AUTH_MODE", auth or "(unset: Ray's token authentication)"))
    lines.append(("CPUs", str(os.cpu_count())))
    shm = shutil.disk_usage("/dev/shm").free if os.path.isdir("/dev/shm") else None
    if shm is not None:
        lines.append(("/dev/shm free", f"{shm / 2**30:.1f} GiB"))
        if shm < 2**30:
            warnings.append(f"/dev/shm has {shm / 2**20:.0f} MiB free: Ray's object store falls back to "
                            "slow disk (in Docker: --shm-size=8g)")
    free = shutil.disk_usage(os.getcwd()).free
    lines.append(("disk free here", f"{free / 2**30:.1f} GiB"))
    if free < 5 * 2**30:
        warnings.append(f"only {free / 2**30:.1f} GiB free where ./results would go: checkpoints may fill it")
    return lines, warnings


def cluster_facts(address: str) -> tuple[list[tuple[str, str]], list[str]]:
    """Resources of the running cluster at `address` (joined and left again)."""
    import ray

    lines, warnings = [], []
    ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        hosts = {n.get("NodeManagerAddress") for n in nodes}
        total = ray.cluster_resources()
        lines.append(("cluster", f"{len(nodes)} node(s) on {len(hosts)} host(s): "
                                 f"{total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs"))
        for node in nodes:
            resources = node.get("Resources", {})
            lines.append((f"node {node['NodeID'][:8]}", f"{node.get('NodeManagerAddress')}: "
                          f"{resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs"))
        if not total.get("GPU"):
            warnings.append("the cluster has no GPUs now (an autoscaling cluster adds GPU workers on demand)")
        if len(hosts) > 1:
            warnings.append("several hosts: sweeps need a shared sweep.storage_path (s3://... or NFS)")
    finally:
        ray.shutdown()
    return lines, warnings


def _nvidia_present() -> bool:
    return os.path.exists("/proc/driver/nvidia/version") or shutil.which("nvidia-smi") is not None


def _netrc_has_wandb() -> bool:
    netrc = os.path.expanduser("~/.netrc")
    return os.path.isfile(netrc) and "api.wandb.ai" in open(netrc).read()


def doctor(address: str | None = None) -> int:
    lines, warnings = facts()
    if address:
        more, more_warnings = cluster_facts(address)
        lines += more
        warnings += more_warnings
    width = max(len(name) for name, _ in lines)
    for name, value in lines:
        print(f"{name + ':':<{width + 1}} {value}")
    for warning in warnings:
        print(f"warning: {warning}")
    return 0


def _version(distribution: str) -> str:
    """The installed version of `distribution`, read from its metadata (without importing it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "installed"
