"""`tuneloop sweep`: the Ray Tune `Tuner` built from the `sweep` section, run, and summarized.

Experiment directory `<storage_path>/<run.name>/` holds Tune's files, one directory per trial
(`trial_<id>/`), the Optuna study (`optuna.db`, unless `sweep.optuna_storage` names another
SQLAlchemy URL), `experiment.yaml` (the validated experiment), `results.csv` and `best.yaml`.
With `storage_path: s3://...` the driver's files are in `<local_dir>/<run.name>/` and copied to
the storage at the end of each run (see `tuneloop.storage`).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tuneloop.checkpointing import atomic_write_text
from tuneloop.config import ExperimentConfig, dump_yaml, load_experiment
from tuneloop.credentials import keep_credentials_out_of_ray
from tuneloop.errors import UserError, Verbatim
from tuneloop.locking import DirectoryUnusable, clear_directory, experiment_lock, has_content, probe_writable
from tuneloop.outcome import best, outcome
from tuneloop.search_space import apply_params, short_value
from tuneloop.storage import DRIVER_FILES, STUDY_FILE, Storage, is_remote, tune_storage, use_sweep

DONE_FILE = "sweep_done"  # written once every trial of the sweep has ended
EXPERIMENT_FILE = "experiment.yaml"


PAUSING_SCHEDULERS = ("hyperband", "median", "pbt")  # they pause trials (or swap in checkpoints)
HISTORY_REWINDS = ("pbt",)  # a trial's epochs may legitimately go back (PBT's clones continue another's)


def experiment_dir(cfg: ExperimentConfig) -> Path:
    """The local directory of the driver's files (with local storage, also Tune's experiment)."""
    base = cfg.sweep.local_dir if is_remote(cfg.sweep.storage_path) else cfg.sweep.storage_path
    return Path(base.removeprefix("file://")).expanduser().resolve() / cfg.run.name


def experiment_storage(cfg: ExperimentConfig) -> Storage:
    """Tune's experiment directory on its storage (the same as `experiment_dir` when local)."""
    return Storage.of_experiment(cfg.sweep, cfg.run.name)


def optuna_url(cfg: ExperimentConfig) -> str:
    return cfg.sweep.optuna_storage or f"sqlite:///{experiment_dir(cfg) / STUDY_FILE}"


def trial_dirname(trial) -> str:
    """Short trial directory names (`trial_<id>`) instead of Tune's parameter-laden default."""
    return f"trial_{trial.trial_id}"


def trial_state(cfg: ExperimentConfig, result: dict | None, error: bool) -> str:
    """complete / pruned / failed on the sweep's metric, by the rule the Optuna study is told."""
    return outcome(result, error, metric=cfg.sweep.metric)[0]


def build_trainable(cfg: ExperimentConfig):
    """`train_trial` with the run section and the resources per trial (also what a restore needs)."""
    from ray import tune

    from tuneloop.trial import train_trial, trainable_class

    sweep, run = cfg.sweep, cfg.run
    run_dict = run.model_dump(mode="json", by_alias=True)
    if sweep.scheduler.name in PAUSING_SCHEDULERS:
        # A paused trial continues from its last checkpoint: without one every epoch, the epochs
        # after it would run twice. PBT also needs the checkpoint of the epoch it exploits.
        run_dict["checkpoint_config"].update(enabled=True, save_every_n_epochs=1)
    function = tune.with_parameters(train_trial, run=run_dict, experiment=run.name,
                                    tags=(f"scheduler:{sweep.scheduler.name}", f"sampler:{sweep.sampler.name}"))
    return tune.with_resources(
        trainable_class(function),
        {"cpu": sweep.resources_per_trial.cpu, "gpu": sweep.resources_per_trial.gpu})


def build_tuner(cfg: ExperimentConfig):
    """The Tuner for `cfg`: TruthfulOptunaSearch (or random search for PBT), the scheduler,
    resources per trial, failure and checkpoint settings."""
    import optuna
    from ray import tune

    from tuneloop.driver_memory import TrimHeap
    from tuneloop.experiment_state import StateBackup, TrialEnds
    from tuneloop.retention import KeepCheckpoints
    from tuneloop.schedulers import build_scheduler
    from tuneloop.search_space import to_optuna, to_tune
    from tuneloop.searcher import StudyRecorder, TruthfulOptunaSearch
    from tuneloop.sweep_progress import SweepProgress

    sweep, run = cfg.sweep, cfg.run
    use_sweep(experiment_dir(cfg), experiment_storage(cfg))
    sampler = getattr(optuna.samplers, sweep.sampler.name)(**sweep.sampler.kwargs)
    callbacks, param_space = [], {}
    scheduler_kwargs = dict(sweep.scheduler.kwargs)
    if sweep.scheduler.name == "pbt":
        # PBT mutates running trials and refuses a search algorithm: random initial configs,
        # and each finished trial is recorded in the Optuna study afterwards. It mutates the
        # keys in `mutate` (default: the optimizer's), which must not change the model's shape.
        mutate = scheduler_kwargs.pop("mutate", None) or [
            k for k in sweep.search_space if k.startswith("optimizer_config.")]
        searcher = None
        param_space = to_tune(sweep.search_space)
        mutations = to_tune({k: sweep.search_space[k] for k in mutate})
        callbacks.append(StudyRecorder(sweep.optuna_storage, run.name, sweep.metric, sweep.mode,
                                       to_optuna(sweep.search_space)))
    else:
        searcher = TruthfulOptunaSearch(to_optuna(sweep.search_space), metric=sweep.metric, mode=sweep.mode,
                                        sampler=sampler, study_name=run.name, study_url=sweep.optuna_storage)
        mutations = None
    ck = run.checkpoint_config
    callbacks += [KeepCheckpoints(ck.keep_last_k, ck.monitor, ck.mode), StateBackup(), TrialEnds(), TrimHeap(),
                  SweepProgress(run.name, sweep.scheduler.name, sweep.metric, sweep.mode, sweep.num_samples,
                                run.epochs, list(sweep.search_space))]
    scheduler = build_scheduler(sweep.scheduler.name, scheduler_kwargs, metric=sweep.metric,
                                mode=sweep.mode, epochs=run.epochs, mutations=mutations)
    trainable = build_trainable(cfg)
    tune_config = tune.TuneConfig(
        search_alg=searcher, scheduler=scheduler, num_samples=sweep.num_samples,
        max_concurrent_trials=sweep.max_concurrent_trials, reuse_actors=True,
        trial_dirname_creator=trial_dirname, trial_name_creator=trial_dirname)
    # result.json and progress.csv, but no TensorBoard event files: TBX costs the driver CPU time
    # that the trials need on a small machine (TUNE_DISABLE_AUTO_CALLBACK_LOGGERS is set by ensure_ray).
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    callbacks += [JsonLoggerCallback(), CSVLoggerCallback()]
    storage_path, storage_filesystem = tune_storage(sweep)
    run_config = tune.RunConfig(
        name=run.name, storage_path=storage_path, storage_filesystem=storage_filesystem, callbacks=callbacks,
        failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
        sync_config=tune.SyncConfig(sync_artifacts=is_remote(sweep.storage_path)),  # see trial.artifact_dir
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
        verbose=0)  # Ray's own wall of columns: off; SweepProgress shows a compact table instead
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)


@dataclass
class TrialRow:
    trial_id: str
    state: str
    epochs: int
    best_val_loss: float
    last_metric: float
    config: dict


def tidy_histories(storage: Storage) -> None:
    """Drop repeated epochs from each trial's result.json and progress.csv (keeping the last row).

    After a driver kill, Tune's snapshot can lag the rows already written: the restored trial runs
    the epoch after its last checkpoint again, with identical losses when resume is exact.
    """
    for trial_dir in storage.listdir():
        if not trial_dir.startswith("trial_"):
            continue
        names = storage.listdir(trial_dir)
        if "result.json" in names:
            lines = storage.read_bytes(f"{trial_dir}/result.json").decode().splitlines()
            rows = [json.loads(line) for line in lines if line.strip()]
            kept = _last_per_epoch(rows, lambda row: row.get("epoch"))
            if len(kept) != len(rows):
                storage.write_bytes(f"{trial_dir}/result.json",
                                    "".join(json.dumps(row) + "\n" for row in kept).encode())
        if "progress.csv" in names:
            text = storage.read_bytes(f"{trial_dir}/progress.csv").decode()
            if text.strip():
                reader = csv.DictReader(io.StringIO(text))
                rows = list(reader)
                kept = _last_per_epoch(rows, lambda row: row.get("epoch"))
                if len(kept) != len(rows):
                    buffer = io.StringIO()
                    writer = csv.DictWriter(buffer, fieldnames=reader.fieldnames, lineterminator="\n")
                    writer.writeheader()
                    writer.writerows(kept)
                    storage.write_bytes(f"{trial_dir}/progress.csv", buffer.getvalue().encode())


def _last_per_epoch(rows: list, epoch_of) -> list:
    latest = {}
    for index, row in enumerate(rows):
        latest[epoch_of(row)] = index
    return [rows[i] for i in sorted(latest.values())]


UNFINISHED = ("PENDING", "RUNNING", "PAUSED")  # Tune trial statuses of an interrupted sweep


def summarize(cfg: ExperimentConfig, results) -> list[TrialRow]:
    """One row per trial from Tune's ResultGrid (state `running` for a trial an interrupt left unfinished)."""
    from tuneloop.experiment_state import TrialEnds

    rows = []
    cut = TrialEnds.current.cut_short() if TrialEnds.current else set()
    unfinished = [t.status in UNFINISHED or t.trial_id in cut
                  for t in results._experiment_analysis.trials]  # same order as the grid
    for result, running in zip(results, unfinished):
        history = result.metrics_dataframe
        epochs = history.to_dict("records") if history is not None and "val_loss" in history else []
        if cfg.sweep.scheduler.name not in HISTORY_REWINDS:  # an epoch run again after a resume counts once
            epochs = _last_per_epoch(epochs, lambda row: row.get("epoch"))
        losses = [row["val_loss"] for row in epochs]
        finite = [v for v in losses if isinstance(v, float) and math.isfinite(v)]
        metrics = result.metrics or {}
        rows.append(TrialRow(
            trial_id=metrics.get("trial_id") or Path(result.path).name.removeprefix("trial_"),
            state="running" if running else trial_state(cfg, metrics, result.error is not None),
            epochs=len(losses), best_val_loss=min(finite) if finite else math.inf,
            last_metric=metrics.get(cfg.sweep.metric, math.nan), config=dict(result.config or {})))
    return rows


def best_row(cfg: ExperimentConfig, rows: list[TrialRow]) -> TrialRow | None:
    """The best trial by `tuneloop.outcome.best`: the complete one with the best last value of the
    sweep metric (None when no trial completed)."""
    return best(rows, mode=cfg.sweep.mode, state=lambda r: r.state, value=lambda r: r.last_metric)


def write_results(cfg: ExperimentConfig, rows: list[TrialRow], directory: Path) -> TrialRow | None:
    """results.csv (one row per trial) and best.yaml (a complete experiment file for `tuneloop train`)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    keys = list(cfg.sweep.search_space)
    writer.writerow(["trial_id", "state", "epochs", "best_val_loss", cfg.sweep.metric, *keys])
    for r in rows:
        writer.writerow([r.trial_id, r.state, r.epochs, r.best_val_loss, r.last_metric,
                         *(r.config.get(k) for k in keys)])
    atomic_write_text(directory / "results.csv", buffer.getvalue())
    best = best_row(cfg, rows)
    if best is not None:
        experiment = cfg.model_dump(mode="json", by_alias=True)
        experiment["run"] = apply_params(experiment["run"], {k: best.config[k] for k in keys if k in best.config})
        header = (f"# Best trial {best.trial_id} of sweep {cfg.run.name}: {cfg.sweep.metric}="
                  f"{best.last_metric:.6g} ({best.state}). Train it: tuneloop train best.yaml\n")
        atomic_write_text(directory / "best.yaml", header + dump_yaml(experiment))
    return best


def print_table(cfg: ExperimentConfig, rows: list[TrialRow], best: TrialRow | None) -> None:
    keys = list(cfg.sweep.search_space)
    header = f"{'trial':<12} {'state':<9} {'epochs':>6} {'best val_loss':>13} {cfg.sweep.metric:>13}  config"
    print(header)
    order = sorted(rows, key=lambda r: r.trial_id)
    for r in order:
        config = " ".join(f"{k}={short_value(r.config.get(k))}" for k in keys)
        print(f"{r.trial_id:<12} {r.state:<9} {r.epochs:>6} {r.best_val_loss:>13.6g} {r.last_metric:>13.6g}  {config}")
    counts = {s: sum(r.state == s for r in rows) for s in ("complete", "pruned", "failed", "running")}
    if not counts["running"]:
        del counts["running"]
    print(f"{len(rows)} trials: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    if best is not None:
        print(f"best: trial {best.trial_id} {cfg.sweep.metric}={best.last_metric:.6g} "
              + " ".join(f"{k}={short_value(best.config.get(k))}" for k in keys))


def ray_address(address: str | None) -> str:
    """What to `ray.init`: --address, else RAY_ADDRESS (which `ray job submit` sets), else "local":
    our own embedded Ray (Ray would otherwise join whatever cluster was last started here)."""
    return address or os.environ.get("RAY_ADDRESS") or "local"


def ensure_ray(address: str | None, *, trial_log=None) -> bool:
    """Connect to `address` (or start an embedded local Ray); True when this call started Ray.
    `trial_log` (a `tuneloop.trial_log.TrialLog`): the trials' own output goes there, prefixed by
    trial id, instead of Ray's worker lines (None: Ray prints them as it does)."""
    import ray

    from tuneloop.trial import THREAD_TIMEOUT_S

    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # see build_tuner's loggers
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no boxes (SweepProgress reports)
    # Snapshot the experiment state after every result (Tune's default: every >= 10 s). After a
    # driver crash, trials restart from the checkpoint the last snapshot names: with a lagging
    # snapshot they would retrain every epoch since. Users may set their own period.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    # A stopped trial's thread still finishes its W&B run (flushing the offline files) after the
    # scheduler's STOP; before reusing its actor for the next trial Ray waits 2 s, then abandons
    # the actor, killing wandb mid-write (a stopped actor: see trial.trainable_class).
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", str(THREAD_TIMEOUT_S))
    keep_credentials_out_of_ray()  # Ray Tune would log the driver's AWS keys (tuneloop.credentials)
    if ray.is_initialized():
        return False
    with _quiet_token_auth_notice():
        ray.init(address=ray_address(address), include_dashboard=False, log_to_driver=True,
                 configure_logging=True, logging_level="WARNING")
    if trial_log is not None:
        from tuneloop.trial_log import attach

        attach(trial_log)
    return True


@contextlib.contextmanager
def _quiet_token_auth_notice():
    """Ray 2.60 turns token authentication on for a new local Ray (RAY_AUTH_MODE unset) and logs
    a warning that it did: a notice of its default, not of a problem. The protection stays on."""
    logger = logging.getLogger("ray._private.authentication.authentication_token_setup")

    def notice(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")

    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)


def run_sweep(cfg: ExperimentConfig, *, file: str, address: str | None = None, quiet: bool = False,
              overwrite: bool = False) -> int:
    """Run the sweep; print the table and the best config; return the exit status."""
    if not cfg.sweep.search_space:
        raise UserError("a sweep needs at least one parameter to search", file=file, key="sweep.search_space",
                        value={}, choices=[Verbatim("optimizer_config.lr: {type: float, low: 1.0e-4, high: 1.0, log: true}")])
    directory, storage = experiment_dir(cfg), experiment_storage(cfg)
    check_storage(cfg, storage, file=file)
    if has_content(directory) or (not storage.is_local and storage.exists()):
        if not overwrite:
            raise UserError("the experiment directory already exists; continue it with "
                            f"`tuneloop resume {directory}` or start over with --overwrite",
                            file=file, key="sweep.storage_path", value=storage.uri)
    old_study = check_study(cfg, file=file, overwrite=overwrite)
    if local_ray(address):
        check_local_resources(cfg, file=file)

    def start():  # the Tuner, once Ray is up and the storage suits the cluster
        if overwrite:
            clear_directory(directory)  # all but the lock this driver holds
            if storage.exists():
                storage.delete_dir("")
        if old_study:  # in sweep.optuna_storage, outside the experiment directory
            import optuna

            optuna.delete_study(study_name=cfg.run.name, storage=cfg.sweep.optuna_storage)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(directory / EXPERIMENT_FILE, dump_yaml(cfg.model_dump(mode="json", by_alias=True)))
        if not storage.is_local:  # so that even a crashed first run can be found from its URI
            storage.upload(directory, [EXPERIMENT_FILE])
        return build_tuner(cfg)

    try:
        with experiment_lock(directory, "run"):  # one driver per experiment directory (tuneloop.locking)
            return _fit(cfg, start, address, file=file, quiet=quiet)
    except DirectoryUnusable as exc:  # taking the lock failed: nothing was started or written
        key, value = ("sweep.storage_path", cfg.sweep.storage_path) if storage.is_local else (
            "sweep.local_dir", cfg.sweep.local_dir)
        raise UserError(f"must be a directory this user can create and write ({_os_reason(exc.error, directory)})",
                        file=file, key=key, value=value) from None


def check_storage(cfg: ExperimentConfig, storage: Storage, *, file: str | None) -> None:
    """Refuse, before Ray starts, a storage the sweep could not write: a bucket that does not
    exist, a local directory that cannot be created or written."""
    key = "sweep.storage_path"
    if storage.is_local:
        _check_writable(Path(storage.root), key=key, value=cfg.sweep.storage_path, file=file)
        return
    _check_writable(experiment_dir(cfg), key="sweep.local_dir", value=cfg.sweep.local_dir, file=file)
    bucket = storage.root.split("/", 1)[0]
    try:
        found = storage.fs.get_file_info(bucket).type.name != "NotFound"
    except OSError as exc:
        raise UserError(f"cannot reach the storage ({exc})", file=file, key=key,
                        value=cfg.sweep.storage_path) from None
    if not found:
        raise UserError(f"the bucket {bucket!r} does not exist (create it first)", file=file, key=key,
                        value=cfg.sweep.storage_path)


def _check_writable(directory: Path, *, key: str, value: str, file: str | None) -> None:
    """`directory` (the experiment's) is a directory this user can create and write: tried for
    real (its missing parents made, a file written in it, then everything made removed again), so
    that /proc, a path below a file or a read-only mount is refused before anything is written."""
    if directory.exists() and not directory.is_dir():
        raise UserError(f"must lead to a directory, but {directory} is a file", file=file, key=key, value=value)
    try:
        probe_writable(directory)
    except OSError as exc:
        raise UserError(f"must be a directory this user can create and write ({_os_reason(exc, directory)})",
                        file=file, key=key, value=value) from None


def _os_reason(exc: OSError, directory: Path) -> str:
    """What an OSError says, briefly: `/proc/x is not writable`, `blocker is a file`, ..."""
    where = exc.filename or directory
    if isinstance(exc, NotADirectoryError) or (isinstance(exc, FileExistsError) and not Path(where).is_dir()):
        found = next((p for p in (Path(where), *Path(where).parents) if p.exists() and not p.is_dir()), where)
        return f"{found} is a file"
    if isinstance(exc, PermissionError) or exc.errno == errno.EROFS:
        return f"{where} is not writable"
    return f"{where}: {exc.strerror or exc}"


def check_study(cfg: ExperimentConfig, *, file: str | None, overwrite: bool) -> bool:
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
                        file=file, key=key, value=url) from None
    finally:
        if engine is not None:
            engine.dispose()
    if found and not overwrite:
        raise UserError(f"already holds a study named {name!r} (run.name), which a new sweep would merge into; "
                        "continue it with `tuneloop resume EXPERIMENT_DIR`, change run.name, or start over with "
                        "--overwrite (deletes that study)", file=file, key=key, value=url)
    return bool(found)


def local_ray(address: str | None) -> bool:
    """Whether this sweep starts its own embedded local Ray (no --address, no RAY_ADDRESS, no Ray yet)."""
    if ray_address(address) != "local":
        return False
    import ray

    return not ray.is_initialized()


def check_local_resources(cfg: ExperimentConfig, *, file: str | None) -> None:
    """Before an embedded local Ray starts: one trial's cpu and gpu must fit on this machine
    (Ray would leave every trial PENDING forever)."""
    import torch

    try:
        from ray._private.utils import get_num_cpus  # what Ray will detect (cgroup limits included)

        cpus = get_num_cpus()
    except Exception:  # pragma: no cover - a Ray without that helper
        cpus = os.cpu_count() or 1
    gpus = torch.cuda.device_count()
    need = cfg.sweep.resources_per_trial
    hint = "the sweep runs on an embedded local Ray here; --address joins a cluster"
    if need.cpu > cpus:
        raise UserError(f"cpu <= {cpus} must hold (this machine has {cpus} CPUs; {hint})", file=file,
                        key="sweep.resources_per_trial.cpu", value=Verbatim(f"cpu={need.cpu:g}"))
    if need.gpu > gpus:
        seen = f"torch sees {gpus} CUDA GPU(s) here" + (
            f" with CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r}" if "CUDA_VISIBLE_DEVICES" in os.environ
            else "")
        raise UserError(f"gpu <= {gpus} must hold ({seen}; {hint})", file=file,
                        key="sweep.resources_per_trial.gpu", value=Verbatim(f"gpu={need.gpu:g}"))


AUTOSCALER_CONFIG = "~/ray_bootstrap_config.yaml"  # present on the head of a `ray up` cluster


def check_cluster_resources(cfg: ExperimentConfig, *, file: str | None) -> None:
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
    if not nodes or any(cpu >= need.cpu and gpu >= need.gpu for cpu, gpu in nodes):
        return
    shown = "; ".join(f"cpu={cpu:g}, gpu={gpu:g}" for cpu, gpu in sorted(set(nodes)))
    raise UserError(f"one trial's cpu and gpu must fit on one node of the cluster (its nodes"
                    f"{' and node types' if autoscaler.is_file() else ''}: {shown})", file=file,
                    key="sweep.resources_per_trial", value=Verbatim(f"cpu={need.cpu:g}, gpu={need.gpu:g}"))


def check_shared_storage(cfg: ExperimentConfig, storage: Storage, *, file: str | None) -> None:
    """A local storage_path on a cluster of several hosts: trials on other hosts could neither
    write their checkpoints where the driver reads them nor resume elsewhere. Refused before
    any trial starts (Ray would fail later, trial by trial, with a less clear message)."""
    import ray

    if not storage.is_local:
        return
    hosts = {node.get("NodeManagerAddress") for node in ray.nodes() if node.get("Alive")}
    if len(hosts) > 1:
        raise UserError(f"must be shared by all {len(hosts)} hosts of the cluster (s3://bucket/prefix, or an NFS "
                        "path mounted on every node) to run there, but it is a local directory", file=file,
                        key="sweep.storage_path", value=cfg.sweep.storage_path)


def resume_sweep(target: str | Path, *, address: str | None = None, quiet: bool = False) -> int:
    """Continue an interrupted sweep: finished trials stay, running ones continue from their last
    checkpoint, pending ones start; the searcher and the schedulers' saved state continue.

    `target` is the experiment's local directory, or its storage URI (`s3://bucket/prefix/name`):
    then the driver's files missing locally are fetched from the storage first. A second driver
    on the same directory is refused (tuneloop.locking).
    """
    directory = _local_directory(str(target))
    cfg = load_sweep(directory, shown=str(target))
    try:
        with experiment_lock(directory, "resumed"):  # refuses a second driver, before Ray starts
            return _resume(cfg, directory, target, address, quiet)
    except DirectoryUnusable as exc:
        raise UserError(f"must be a directory this user can create and write ({_os_reason(exc.error, directory)})",
                        key="EXPERIMENT_DIR", value=str(target)) from None


def _resume(cfg: ExperimentConfig, directory: Path, target: str | Path, address: str | None,
            quiet: bool = False) -> int:
    """resume_sweep, once this driver holds the experiment directory's lock."""
    from ray import tune

    from tuneloop.experiment_state import relocate, repair

    if (directory / DONE_FILE).is_file():
        print(f"the sweep in {directory} already finished; nothing to resume "
              f"(`tuneloop report {directory}` summarizes it)")
        return 0
    storage = experiment_storage(cfg)
    filesystem = tune_storage(cfg.sweep)[1]
    storage_path = storage.root if filesystem is not None else storage.uri  # Tune's own spelling
    if not tune.Tuner.can_restore(storage_path, storage_filesystem=filesystem):
        raise UserError("is not a tuneloop sweep directory (no Tune state in its storage)",
                        key="EXPERIMENT_DIR", value=storage.uri)
    try:
        damaged = repair(storage)
    except RuntimeError as exc:
        raise UserError(str(exc), key="EXPERIMENT_DIR", value=storage.uri) from None
    relocate(storage)
    if damaged:
        print(f"warning: Tune's experiment state was damaged ({', '.join(damaged)}; the driver was killed "
              "while writing it): continuing from the last intact snapshot", flush=True)

    def restore():
        return tune.Tuner.restore(storage_path, trainable=build_trainable(cfg), resume_unfinished=True,
                                  resume_errored=True, storage_filesystem=filesystem,
                                  param_space=_param_space(cfg) if cfg.sweep.scheduler.name == "pbt" else None)

    return _fit(cfg, restore, address, quiet=quiet)


def load_sweep(directory: Path, shown: str | None = None) -> ExperimentConfig:
    """The experiment of the sweep whose local directory is `directory`, read where it is now
    (moved or fetched: storage_path, or local_dir with remote storage, is pointed there)."""
    if not (directory / EXPERIMENT_FILE).is_file():
        raise UserError("is not a tuneloop sweep directory (no experiment.yaml in it)",
                        key="EXPERIMENT_DIR", value=shown or str(directory))
    cfg = load_experiment(directory / EXPERIMENT_FILE)
    if experiment_dir(cfg) != directory:
        if is_remote(cfg.sweep.storage_path):
            cfg.sweep.local_dir = str(directory.parent)
        else:
            cfg.sweep.storage_path = str(directory.parent)
    return cfg


def _local_directory(target: str) -> Path:
    """The local directory of the driver's files for a resume of `target` (a path or a URI)."""
    if not is_remote(target):
        return Path(target).expanduser().resolve()
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(target)
    remote = Storage(fs, path.rstrip("/"), target.rstrip("/"))
    if not remote.exists(EXPERIMENT_FILE):
        raise UserError("is not a tuneloop sweep directory (no experiment.yaml in it)",
                        key="EXPERIMENT_DIR", value=target)
    fetched = Path(tempfile.mkdtemp(prefix="tuneloop-resume-"))
    try:
        remote.download(fetched, [EXPERIMENT_FILE])
        directory = experiment_dir(load_experiment(fetched / EXPERIMENT_FILE))
    finally:
        shutil.rmtree(fetched, ignore_errors=True)
    present = set(os.listdir(directory)) if directory.is_dir() else set()
    remote.download(directory, [n for n in DRIVER_FILES if n not in present])  # local copies are newer
    return directory


def _param_space(cfg: ExperimentConfig) -> dict:
    from tuneloop.search_space import to_tune

    return to_tune(cfg.sweep.search_space)


def _fit(cfg: ExperimentConfig, make_tuner, address: str | None, file: str | None = None,
         quiet: bool = False) -> int:
    import ray

    from tuneloop.experiment_state import publish_final
    from tuneloop.sweep_progress import SweepProgress

    import optuna

    from tuneloop.trial_log import TrialLog

    trial_log = TrialLog()  # the trials' own lines, printed by SweepProgress (above its table)
    SweepProgress.configure(quiet=quiet, trial_log=trial_log)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created ..." lines

    directory, storage = experiment_dir(cfg), experiment_storage(cfg)
    use_sweep(directory, storage)  # before a restore unpickles the searcher and the schedulers
    started = ensure_ray(address, trial_log=trial_log)
    try:
        check_shared_storage(cfg, storage, file=file)
        check_cluster_resources(cfg, file=file)
        results = make_tuner().fit()
        publish_final(results._experiment_analysis.trials, storage)
    finally:
        if started:
            ray.shutdown()
    if cfg.sweep.scheduler.name not in HISTORY_REWINDS:
        tidy_histories(storage)
    rows = summarize(cfg, results)
    best = write_results(cfg, rows, directory)
    print_table(cfg, rows, best)
    unfinished = [r for r in rows if r.state == "running"]
    done = not unfinished and len(rows) >= cfg.sweep.num_samples
    if done:
        atomic_write_text(directory / DONE_FILE, f"{len(rows)} trials\n")
    if not storage.is_local:
        storage.upload(directory, DRIVER_FILES)
        print(f"trials and checkpoints: {storage.uri}")
    print(f"experiment directory: {directory}")
    if not done:
        print(f"interrupted: {len(unfinished)} trial(s) unfinished, {cfg.sweep.num_samples - len(rows)} not "
              f"started; continue with `tuneloop resume {directory}`")
        return 130
    if rows and all(r.state == "failed" for r in rows):
        print(f"error: all {len(rows)} trials failed; tracebacks in {storage.uri}/trial_*/error.txt")
        return 1
    return 0
