"""The sweep's checks before anything is written: a search space, a storage the sweep can write, no
study it would merge into, a trial that fits the machine or the cluster, storage every host shares.

Each failure is a UserError (exit 2) naming the key, the rule and the value; the command line adds
the experiment file's name.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from tuneloop.config.errors import UserError, Verbatim
from tuneloop.config.schema import ExperimentConfig, is_conditional
from tuneloop.storage import Storage
from tuneloop.sweep.locking import has_content, probe_writable
from tuneloop.sweep.paths import experiment_dir
from tuneloop.tune import _compat


def check_experiment(cfg: ExperimentConfig, *, device: str | None = "cpu") -> dict:
    """What `validate` checks and a sweep checks before Ray starts: import paths and keyword
    arguments (every branch of the search space), the sampler and the scheduler's arguments, the
    trackers (`check_loggers`), then one training batch (the preflight, on `device`; a sweep's on the
    CPU: cheap). Its report, with `modules`: the modules these checks imported, in order (what a trial
    will import too)."""
    import sys

    from tuneloop.config import check_imports
    from tuneloop.training.preflight import preflight
    from tuneloop.tune.schedulers import check_scheduler

    before = set(sys.modules)
    check_imports(cfg)
    check_scheduler(cfg)
    check_loggers(cfg)
    report = preflight(cfg, device=device)
    report["modules"] = [name for name in list(sys.modules) if name not in before]
    return report


def check_search_space(cfg: ExperimentConfig) -> None:
    """A sweep searches at least one parameter; PBT (no searcher: it mutates configs itself) takes
    neither sub-spaces nor points to evaluate nor a warm start."""
    sweep = cfg.sweep
    if not sweep.search_space:
        raise UserError("a sweep needs at least one parameter to search", key="sweep.search_space", value={},
                        choices=[Verbatim("optimizer_config.lr: {type: float, low: 1.0e-4, high: 1.0, log: true}")])
    if sweep.scheduler.name == "pbt":
        for key, used in (("search_space", is_conditional(sweep.search_space)),
                          ("points_to_evaluate", bool(sweep.points_to_evaluate)),
                          ("warm_start_from", sweep.warm_start_from is not None)):
            if used:
                raise UserError("is not available with the pbt scheduler (it draws and mutates configurations "
                                "itself, without Optuna's sampler)", key=f"sweep.{key}",
                                value=Verbatim("a conditional space" if key == "search_space" else
                                               str(getattr(sweep, key))), choices=["asha", "pfl", "fifo"])


def check_loggers(cfg: ExperimentConfig) -> None:
    """Each tracker of `sweep.loggers` can run: its package is installed, and an MLflow tracking
    server named by URL answers (an SQLite or file store is created by the first run)."""
    from tuneloop.tune.loggers import installed, tracking_server_error

    for index, spec in enumerate(cfg.sweep.loggers):
        if spec.name == "mlflow" and not installed("mlflow"):
            raise UserError("the mlflow logger needs MLflow, which is not installed: pip install 'tuneloop[mlflow]'",
                            key=f"sweep.loggers.{index}.name", value="mlflow")
        uri = spec.tracking_uri or (os.environ.get("MLFLOW_TRACKING_URI") if spec.name == "mlflow" else None)
        problem = tracking_server_error(uri) if uri else None
        if problem:
            where = "tracking_uri" if spec.tracking_uri else "tracking_uri (from MLFLOW_TRACKING_URI)"
            raise UserError(f"must be an MLflow tracking server this machine can reach ({problem})",
                            key=f"sweep.loggers.{index}.{where}", value=uri)


def check_new_experiment(cfg: ExperimentConfig, directory: Path, storage: Storage, *, overwrite: bool) -> None:
    """The experiment directory is new, or --overwrite says to start over."""
    if (has_content(directory) or (not storage.is_local and storage.exists())) and not overwrite:
        raise UserError("the experiment directory already exists; continue it with "
                        f"`tuneloop resume {directory}` or start over with --overwrite",
                        key="sweep.storage_path", value=storage.uri)


def check_storage(cfg: ExperimentConfig, storage: Storage) -> None:
    """Refuse, before Ray starts, a storage the sweep could not write: a bucket that does not
    exist, a local directory that cannot be created or written."""
    key = "sweep.storage_path"
    if storage.is_local:
        _check_writable(Path(storage.root), key=key, value=cfg.sweep.storage_path)
        return
    _check_writable(experiment_dir(cfg), key="sweep.local_dir", value=cfg.sweep.local_dir)
    bucket = storage.root.split("/", 1)[0]
    try:
        found = storage.fs.get_file_info(bucket).type.name != "NotFound"
    except OSError as exc:
        raise UserError(f"cannot reach the storage ({exc})", key=key,
                        value=cfg.sweep.storage_path) from None
    if not found:
        raise UserError(f"the bucket {bucket!r} does not exist (create it first)", key=key,
                        value=cfg.sweep.storage_path)


def _check_writable(directory: Path, *, key: str, value: str) -> None:
    """`directory` (the experiment's) is a directory this user can create and write: tried for
    real (its missing parents made, a file written in it, then everything made removed again), so
    that /proc, a path below a file or a read-only mount is refused before anything is written."""
    if directory.exists() and not directory.is_dir():
        raise UserError(f"must lead to a directory, but {directory} is a file", key=key, value=value)
    try:
        probe_writable(directory)
    except OSError as exc:
        raise unusable(exc, directory, key, value) from None


def unusable(exc: OSError, directory: Path, key: str, value: str) -> UserError:
    """The UserError for an experiment directory that could not be created or written (`exc`)."""
    return UserError(f"must be a directory this user can create and write ({_os_reason(exc, directory)})",
                     key=key, value=value)


def _os_reason(exc: OSError, directory: Path) -> str:
    """What an OSError says, briefly: `/proc/x is not writable`, `blocker is a file`, ..."""
    where = exc.filename or directory
    if isinstance(exc, NotADirectoryError) or (isinstance(exc, FileExistsError) and not Path(where).is_dir()):
        found = next((p for p in (Path(where), *Path(where).parents) if p.exists() and not p.is_dir()), where)
        return f"{found} is a file"
    if isinstance(exc, PermissionError) or exc.errno == errno.EROFS:
        return f"{where} is not writable"
    return f"{where}: {exc.strerror or exc}"


def check_study(cfg: ExperimentConfig, *, overwrite: bool) -> bool:
    """A `sweep.optuna_storage` outside the experiment directory that already holds a study named
    `run.name`: Optuna (load_if_exists) would silently merge the new sweep into it. Refused unless
    --overwrite (then the old study is deleted); returns whether it exists. Read-only: a missing
    SQLite file is not created."""
    import sqlalchemy

    url, name, key = cfg.sweep.optuna_storage, cfg.run.name, "sweep.optuna_storage"
    if not url:
        return False  # the experiment directory's optuna.db: the directory check covers it
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return False
    engine = None
    try:
        engine = sqlalchemy.create_engine(url)
        with engine.connect() as connection:
            if not sqlalchemy.inspect(connection).has_table("studies"):
                return False
            found = connection.execute(sqlalchemy.text("SELECT COUNT(*) FROM studies WHERE study_name = :name"),
                                       {"name": name}).scalar()
    except Exception as exc:
        detail = " ".join(str(exc).split())[:200]
        raise UserError(f"must be an Optuna storage this machine can read ({type(exc).__name__}: {detail})",
                        key=key, value=url) from None
    finally:
        if engine is not None:
            engine.dispose()
    if found and not overwrite:
        raise UserError(f"already holds a study named {name!r} (run.name), which a new sweep would merge into; "
                        "continue it with `tuneloop resume EXPERIMENT_DIR`, change run.name, or start over with "
                        "--overwrite (deletes that study)", key=key, value=url)
    return bool(found)


def check_local_resources(cfg: ExperimentConfig) -> None:
    """Before an embedded local Ray starts: one trial's cpu and gpu must fit on this machine
    (Ray would leave every trial PENDING forever); a distributed trial's workers together, with
    the Train run's driver (`tuneloop.tune.distributed.trial_demand`)."""
    import torch

    from tuneloop.tune.distributed import state_api_installed, trial_demand

    cpus = _compat.detected_cpus()  # what Ray will detect (cgroup limits included)
    gpus = torch.cuda.device_count()
    need = cfg.sweep.resources_per_trial
    hint = "the sweep runs on an embedded local Ray here; --address joins a cluster"
    if need.workers > 1:
        cpu, gpu = trial_demand(need)
        if cpu > cpus or gpu > gpus:
            raise UserError(f"workers x cpu + {cpu - need.workers * need.cpu:g} (the Train run's driver) <= {cpus} "
                            f"and workers x gpu <= {gpus} must hold (this machine has {cpus} CPUs and {gpus} GPUs; "
                            f"{hint})", key="sweep.resources_per_trial",
                            value=Verbatim(f"workers={need.workers}, cpu={need.cpu:g}, gpu={need.gpu:g}"))
        if not state_api_installed():
            raise UserError("workers > 1 needs Ray's State API, which is not installed: "
                            "pip install 'tuneloop[distributed]' (it adds ray[default])",
                            key="sweep.resources_per_trial.workers", value=Verbatim(f"workers={need.workers}"))
        return
    if need.cpu > cpus:
        raise UserError(f"cpu <= {cpus} must hold (this machine has {cpus} CPUs; {hint})",
                        key="sweep.resources_per_trial.cpu", value=Verbatim(f"cpu={need.cpu:g}"))
    if need.gpu > gpus:
        seen = f"torch sees {gpus} CUDA GPU(s) here" + (
            f" with CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r}" if "CUDA_VISIBLE_DEVICES" in os.environ
            else "")
        raise UserError(f"gpu <= {gpus} must hold ({seen}; {hint})",
                        key="sweep.resources_per_trial.gpu", value=Verbatim(f"gpu={need.gpu:g}"))


AUTOSCALER_CONFIG = "~/ray_bootstrap_config.yaml"  # present on the head of a `ray up` cluster


def check_cluster_resources(cfg: ExperimentConfig) -> None:
    """Once connected, before the Tuner runs: one trial's cpu and gpu must fit on one node of the
    cluster (its placement group is one bundle), counting the node types an autoscaler can add.
    Otherwise Ray would leave every trial PENDING forever."""
    import ray

    need = cfg.sweep.resources_per_trial
    nodes = [(n.get("Resources", {}).get("CPU", 0), n.get("Resources", {}).get("GPU", 0))
             for n in ray.nodes() if n.get("Alive")]
    autoscaler = Path(AUTOSCALER_CONFIG).expanduser()
    if autoscaler.is_file():
        import yaml

        try:
            types = (yaml.safe_load(autoscaler.read_text()) or {}).get("available_node_types") or {}
        except (OSError, yaml.YAMLError):
            return
        for node_type in types.values():
            resources = (node_type or {}).get("resources")
            if not resources or "CPU" not in resources:
                return  # detected when the node starts: cannot tell beforehand
            nodes.append((resources.get("CPU", 0), resources.get("GPU", 0)))
    if need.workers > 1:
        _check_cluster_workers(cfg, nodes, autoscaler.is_file())
        return
    if not nodes or any(cpu >= need.cpu and gpu >= need.gpu for cpu, gpu in nodes):
        return
    shown = "; ".join(f"cpu={cpu:g}, gpu={gpu:g}" for cpu, gpu in sorted(set(nodes)))
    raise UserError(f"one trial's cpu and gpu must fit on one node of the cluster (its nodes"
                    f"{' and node types' if autoscaler.is_file() else ''}: {shown})",
                    key="sweep.resources_per_trial", value=Verbatim(f"cpu={need.cpu:g}, gpu={need.gpu:g}"))


def _check_cluster_workers(cfg: ExperimentConfig, nodes: list[tuple[float, float]], autoscaled: bool) -> None:
    """A distributed trial: each worker (one bundle of its placement group) fits on one node, and
    all of them fit on the cluster's nodes together (an autoscaler's node types may add more: then
    only the first rule can be told beforehand)."""
    need = cfg.sweep.resources_per_trial
    value = Verbatim(f"workers={need.workers}, cpu={need.cpu:g}, gpu={need.gpu:g}")
    shown = "; ".join(f"cpu={cpu:g}, gpu={gpu:g}" for cpu, gpu in sorted(set(nodes)))
    if nodes and not any(cpu >= need.cpu and gpu >= need.gpu for cpu, gpu in nodes):
        raise UserError(f"one worker's cpu and gpu must fit on one node of the cluster (its nodes"
                        f"{' and node types' if autoscaled else ''}: {shown})",
                        key="sweep.resources_per_trial", value=value)
    if autoscaled:
        return
    from tuneloop.tune.distributed import workers_that_fit

    fit = workers_that_fit(need, nodes)
    if fit < need.workers:
        raise UserError(f"all of a trial's workers must fit on the cluster's nodes together, but {fit} of "
                        f"{need.workers} do (its nodes: {shown})", key="sweep.resources_per_trial", value=value)


def check_shared_storage(cfg: ExperimentConfig, storage: Storage) -> None:
    """A local storage_path on a cluster of several hosts: trials on other hosts could neither
    write their checkpoints where the driver reads them nor resume elsewhere. Refused before
    any trial starts (Ray would fail later, trial by trial, with a less clear message)."""
    import ray

    if not storage.is_local:
        return
    hosts = {node.get("NodeManagerAddress") for node in ray.nodes() if node.get("Alive")}
    if len(hosts) > 1:
        raise UserError(f"must be shared by all {len(hosts)} hosts of the cluster (s3://bucket/prefix, or an NFS "
                        "path mounted on every node) to run there, but it is a local directory",
                        key="sweep.storage_path", value=cfg.sweep.storage_path)
