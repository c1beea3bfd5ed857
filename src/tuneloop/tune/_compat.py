"""The one door to the internals of Ray and Optuna that tuneloop needs.

Everything here reaches past the libraries' public APIs; each item says what it reaches and why
no public API serves. It was written for the versions in `WRITTEN_FOR`: `version_warnings()`
says when the installed ones differ (`tuneloop doctor` and the start of every sweep print it).
No other module of tuneloop names a private attribute of Ray, Optuna or wandb (a test greps).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

WRITTEN_FOR = {"ray": ((2, 60), (2, 61)), "optuna": ((4, 0), (6, 0))}  # [low, high) of (major, minor)


def _major_minor(version: str) -> tuple[int, int]:
    parts = [int("".join(ch for ch in part if ch.isdigit()) or 0) for part in version.split(".")[:2]]
    return (parts + [0, 0])[0], (parts + [0, 0])[1]


def version_warnings() -> list[str]:
    """One line per library whose installed version is outside the range this module was written for."""
    from importlib.metadata import PackageNotFoundError, version

    warnings = []
    for name, (low, high) in WRITTEN_FOR.items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            continue
        if not low <= _major_minor(installed) < high:
            shown = lambda v: ".".join(map(str, v))  # noqa: E731
            warnings.append(f"{name} {installed} is installed, but tuneloop's use of its internals "
                            f"(tuneloop/tune/_compat.py) was written for {name} >={shown(low)},<{shown(high)}: "
                            "resume, trial files or the study may misbehave")
    return warnings


# --- inside a trial (Ray Train's session, which runs every Tune function trainable) ---------------

def trial_storage():
    """(pyarrow filesystem, the trial's directory on Tune's storage) of the running trial.
    Ray's session object; the public `tune.get_context()` gives only the local working directory."""
    from ray.train._internal.session import get_storage

    storage = get_storage()
    return storage.storage_filesystem, storage.trial_fs_path


def number_checkpoints_after(index: int) -> None:
    """Make the running trial's next checkpoint `checkpoint_<index + 1>` (or later). Ray numbers a
    restored trial's checkpoints on from the one its experiment snapshot names; after a trial
    adopted a newer checkpoint of its own (`tuneloop.tune.trial_checkpoint.adopt_newer`), that would
    overwrite the newer ones. The numbering is the session's StorageContext's; no public API sets it."""
    from ray.train._internal.session import get_storage

    storage = get_storage()
    storage.current_checkpoint_index = max(storage.current_checkpoint_index, index)


def next_checkpoint_path() -> str:
    """Where the running trial's next reported checkpoint will be persisted: `checkpoint_<index + 1>`
    in its directory on Tune's storage (Ray adds 1 to the index, then copies the reported directory
    there). The numbering is the session's StorageContext's; no public API tells it in advance."""
    from ray.train._internal.session import get_storage
    from ray.train._internal.storage import StorageContext

    storage = get_storage()
    return f"{storage.trial_fs_path}/{StorageContext._make_checkpoint_dir_name(storage.current_checkpoint_index + 1)}"


def forget_ended_trial_details(trial) -> None:
    """Drop what Tune keeps of an ended trial that nothing reads any more: its running statistics of
    every numeric result key (`metric_analysis`, `metric_n_steps`: min/max/avg/last-n per key, the
    largest part of the driver's memory per trial, and of every experiment snapshot) and every
    checkpoint result but the latest (its full metrics each). The trial's last result and latest
    checkpoint stay (the results, a resume, retention read those). Attributes of Tune's
    `_TrainingRunMetadata` and `_CheckpointManager`: no public API trims them."""
    metadata = trial.run_metadata
    metadata.metric_analysis = {}
    metadata.metric_n_steps = {}
    manager = metadata.checkpoint_manager
    results = getattr(manager, "_checkpoint_results", None)
    if results and len(results) > 1:
        manager._checkpoint_results = results[-1:]
    metadata.invalidate_cache()
    trial.invalidate_json_state()


def function_trainable_waiting_for_its_thread(function, timeout_s: float):
    """Ray's class for the function trainable `function`, whose `cleanup` lets the trial's thread
    end (up to `timeout_s`) before the actor stops. Ray's own cleanup does not wait when an actor is
    stopped rather than reused; there is no public hook, so this subclasses Ray's wrapper and uses
    the session's thread and locks."""
    from ray.train._internal.session import get_session
    from ray.tune.trainable.function_trainable import wrap_function

    class TuneloopTrial(wrap_function(function)):
        def cleanup(self):
            session = get_session()
            request_stops()  # a distributed trial's workers end at their next report
            if session is not None and session.training_started and session.training_thread.is_alive():
                session.stop_event.set()  # as Ray's own finish: the thread leaves its report
                session.continue_lock.release()
                session.training_thread.join(timeout=timeout_s)
            super().cleanup()

    return TuneloopTrial


# A distributed trial's stop flag (tuneloop.tune.distributed): the Tune trial raises it when Tune stops
# the trial, its rank 0 worker reads it after each report. Ray's internal key-value store (in the GCS)
# reaches both processes without an actor of its own (whose start would cost each trial seconds); the
# public Ray Train API has no way for a Tune trial to stop its Train run.
STOP_KEYS: list[str] = []  # the stop flags of the distributed trials running in this process
_STOP_NAMESPACE = "tuneloop_stop"


def request_stop(key: str) -> None:
    from ray.experimental.internal_kv import _internal_kv_put

    _internal_kv_put(key, b"1", namespace=_STOP_NAMESPACE)


def request_stops() -> None:
    """Raise the stop flag of every distributed trial running in this process. (A module-level
    function, so that the trainable class, which cloudpickle copies by value with the globals its
    methods name, reaches this module's `STOP_KEYS`, not a copy of it.)"""
    for key in list(STOP_KEYS):
        request_stop(key)


def stop_requested(key: str) -> bool:
    from ray.experimental.internal_kv import _internal_kv_get

    return _internal_kv_get(key, namespace=_STOP_NAMESPACE) is not None


CHECKPOINT_LOGGER = "ray.train._internal.storage"  # logs "Checkpoint successfully created" per checkpoint
# Tune's notices at Ctrl-C (ray/tune/tune.py): the stop, then "Resume experiment with: Tuner.restore(...)",
# which is not how a tuneloop sweep resumes.
TUNE_LOGGER = "ray.tune.tune"
TUNE_STOP_NOTICE = "Stop signal received"
TUNE_RESUME_NOTICES = ("Experiment has been interrupted", "Training has been interrupted")
# Warns, when the sweep's results are read, of each trial without result files: a trial an interrupt
# stopped as it started (the summary lists it as running).
ANALYSIS_LOGGER = "ray.tune.analysis.experiment_analysis"
NO_METRICS_NOTICE = "Failed to fetch metrics for"
# Logs a traceback (in the message) for a sync of the driver's staging directory that failed; the next sync retries.
SYNCER_LOGGER = "ray.train._internal.syncer"
# Logs the exception of that sync when it waits for it: before a forced save (a Ctrl-C), "Saving experiment
# state to storage at '...' failed with exception:" (ray/tune/execution/experiment_state.py).
EXPERIMENT_STATE_LOGGER = "ray.tune.execution.experiment_state"
# Tune writes its searcher state atomically through `.<uuid>-tmp-<name>` files (ray.tune.search.searcher);
# a sync that lists one before its rename and copies it after fails on a file that no longer exists.
ATOMIC_WRITE_TMP_MARK = "-tmp-"


# --- the driver ----------------------------------------------------------------------------------

def detected_cpus() -> int:
    """The CPUs an embedded local Ray will detect (cgroup limits included): Ray's own helper, which
    no public API exposes before `ray.init`."""
    import os

    try:
        from ray._private.utils import get_num_cpus

        return int(get_num_cpus())
    except Exception:  # pragma: no cover - a Ray without that helper
        return os.cpu_count() or 1


# Ray 2.60 logs this at ray.init of a new local Ray: a notice of its default, not a problem.
TOKEN_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
TOKEN_AUTH_NOTICE = "Token authentication is enabled for this Ray cluster"


def route_worker_output(handler) -> None:
    """Send the connected driver's forwarded worker output (batches of lines: `ip`, `pid`, `lines`)
    to `handler` instead of Ray's printer. Ray has no public hook to format or filter it; its
    printer is the handler "ray_print_logs" of this dispatcher."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    dispatcher.remove_handler("ray_print_logs")
    dispatcher.remove_handler("tuneloop")
    dispatcher.add_handler("tuneloop", handler)


# Secrets Ray Tune copies from the driver's environment into every trial actor's runtime_env
# (which Ray's runtime-env agent logs in plain text): ray/tune/execution/class_cache.py.
PROPAGATED_CREDENTIALS = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN",
                                    "AWS_SESSION_TOKEN"})


def stop_propagating_credentials() -> None:
    """Remove the credentials from the set Ray Tune propagates (a module-level set, no API)."""
    try:
        from ray.tune.execution import class_cache
    except ImportError:  # another Ray layout: nothing we know of to remove
        return
    propagated = getattr(class_cache, "ENV_VARS_TO_PROPAGATE", None)
    if propagated is not None:
        class_cache.ENV_VARS_TO_PROPAGATE = set(propagated) - PROPAGATED_CREDENTIALS


# Tune counts a run's callbacks for Ray's usage telemetry (`air_usage.tag_callbacks`, ray/tune/tune.py)
# by importing the W&B, MLflow, Comet and Aim integrations to compare classes: wandb and mlflow with
# them, about 2 s of CPU in every driver, most of which use neither. No setting skips the count.
BUILT_IN_LOGGERS = ("WandbLoggerCallback", "MLflowLoggerCallback", "CometLoggerCallback", "AimLoggerCallback")


def count_callbacks_by_name() -> None:
    """Make Tune's callback count compare class names, as its own does, without those imports."""
    try:
        from ray.air._internal import usage
    except ImportError:  # another Ray layout: its own count stays
        return
    if callable(getattr(usage, "_count_callbacks", None)):
        usage._count_callbacks = _count_callbacks


def _count_callbacks(callbacks) -> dict[str, int]:
    """Ray's `_count_callbacks` (callback class name → count), by name."""
    from ray.tune import Callback
    from ray.tune.logger import LoggerCallback
    from ray.tune.utils.callback import DEFAULT_CALLBACK_CLASSES

    built_in = {*BUILT_IN_LOGGERS, *(cls.__name__ for cls in DEFAULT_CALLBACK_CLASSES)}
    counts: dict[str, int] = {}
    for callback in callbacks or []:
        if isinstance(callback, Callback):
            name = type(callback).__name__
            if name not in built_in:
                name = "CustomLoggerCallback" if isinstance(callback, LoggerCallback) else "CustomCallback"
            counts[name] = counts.get(name, 0) + 1
    return counts


def tuner_parts(tuner) -> list:
    """The searcher, the scheduler and the callbacks a Tuner will run with (for a restored Tuner: the
    ones Tune unpickled from `tuner.pkl`), so the driver can bind them to where the sweep is now.
    `Tuner.restore` takes no new searcher, scheduler or callbacks, and gives no access to them."""
    internal = tuner._local_tuner
    tune_config = internal._tune_config
    return [tune_config.search_alg, tune_config.scheduler, *(internal.get_run_config().callbacks or [])]


# --- Tune's per-trial loggers -------------------------------------------------------------------

class _KeepLocalRows:
    """When a trial restarts in the same driver (Ray retries a crashed one), Tune's JSON and CSV
    loggers replace the trial's local rows with the storage's copy (`_restore_from_remote`, no
    public hook), which Tune's background upload may not have caught up with: the rows since its
    last upload were lost. A local file that exists holds this driver's own rows, the newest: it
    is kept; the storage's copy is taken only when there is none (a resumed sweep's new driver)."""

    def _restore_from_remote(self, file_name, trial):
        local = Path(trial.local_path, file_name)
        if local.is_file() and local.stat().st_size > 0:
            return
        super()._restore_from_remote(file_name, trial)


def trial_loggers() -> list:
    """Tune's JSON (`result.json`) and CSV (`progress.csv`) logger callbacks, keeping local rows."""
    return [cls() for cls in _logger_classes()]


def _logger_classes() -> tuple[type, type]:
    """The two logger classes, built once (module attributes, so that Tune can pickle them)."""
    if "JsonLogger" not in globals():
        from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

        for name, base in (("JsonLogger", JsonLoggerCallback), ("CsvLogger", CSVLoggerCallback)):
            globals()[name] = type(name, (_KeepLocalRows, base),
                                   {"__module__": __name__, "__doc__": f"Tune's {base.__name__}, keeping local rows."})
    return globals()["JsonLogger"], globals()["CsvLogger"]


def __getattr__(name):  # unpickling a sweep's loggers builds the classes first (importing needs no Ray)
    if name in ("JsonLogger", "CsvLogger"):
        return dict(zip(("JsonLogger", "CsvLogger"), _logger_classes()))[name]
    raise AttributeError(name)


# --- Tune's experiment state on storage ---------------------------------------------------------

# The files of Tune's experiment snapshot (Tune restores the newest of each name); not a public format.
TUNER_FILE = "tuner.pkl"  # the Tuner as Tune pickled it at the start (searcher, scheduler, callbacks)
STATE_PATTERNS = ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl",
                  "callback-states-*.pkl", TUNER_FILE)
SEARCH_GENERATOR_STATE = "search_gen_state-"


@contextlib.contextmanager
def results_without_histories():
    """While the block runs, Tune's `ExperimentAnalysis` (which `Tuner.fit` builds as it ends, for
    its ResultGrid) reads no trial's history: each Result's `metrics_dataframe` is None. It would
    read every trial's whole result.json into a pandas DataFrame at once (about 60 KB per trial in
    the driver, and seconds at thousands of trials), for histories that tuneloop reads itself, one
    trial at a time (`tuneloop.sweep.results.summarize`). No public option of Tune skips them."""
    from ray.tune.analysis.experiment_analysis import ExperimentAnalysis

    original = ExperimentAnalysis.__dict__["_fetch_trial_dataframes"]
    ExperimentAnalysis._fetch_trial_dataframes = lambda self: {}
    try:
        yield
    finally:
        ExperimentAnalysis._fetch_trial_dataframes = original


def experiment_staging_dir(trial) -> Path:
    """The driver's local staging directory of the experiment, where Tune writes each snapshot
    before copying it to the storage (a StorageContext attribute; no public accessor)."""
    return Path(trial.storage.experiment_driver_staging_path)


def trial_storage_of(trial):
    """(pyarrow filesystem, directory) of `trial` on Tune's storage (its StorageContext)."""
    return trial.storage.storage_filesystem, trial.storage.trial_fs_path


def relocate_search_generator(data: bytes, filesystem, parent: str) -> bytes | None:
    """The pickled search-generator state `data` with its experiment's storage pointed at `parent`
    on `filesystem`, or None when it already points there. Ray's restore relocates the restored
    trials but not the experiment the search generator keeps, whose new trials would then be
    written where the experiment used to be."""
    import ray.cloudpickle as cloudpickle

    state = cloudpickle.loads(data)
    experiment = state.get("experiment")
    context = getattr(experiment, "storage", None)
    if context is None or (context.storage_fs_path == parent and
                           type(context.storage_filesystem) is type(filesystem)):
        return None
    context.storage_fs_path = parent
    context.storage_filesystem = filesystem
    experiment.spec["storage"] = context
    return cloudpickle.dumps(state)


# --- Optuna through Ray's OptunaSearch ------------------------------------------------------------
# Ray's OptunaSearch keeps the study, its Optuna trials and the space in private attributes; the
# truthful searcher subclasses it, so it must read and (when unpickled) rebuild them.

def optuna_study(search):
    return search._ot_study


def optuna_trials(search) -> dict:
    """Tune trial id → Optuna trial."""
    return search._ot_trials


def optuna_space(search) -> dict:
    return search._space


def completed_trials(search) -> set:
    """The Tune trials OptunaSearch has told the study about."""
    return search._completed_trials


def optuna_trial_id(trial) -> int:
    """The storage's id of an Optuna trial (kept by pickles instead of the live trial)."""
    return trial._trial_id


def detach_optuna(state: dict, search) -> dict:
    """`state` (a copy of an OptunaSearch's __dict__) without its live storage and study, its
    Optuna trials kept by id: what can be pickled and reopened on another machine."""
    state["_storage"] = state["_ot_study"] = None
    state["_ot_trials"] = {key: trial._trial_id for key, trial in search._ot_trials.items()}
    state["_bound"] = search._ot_study is not None
    return state


def detached_again(state: dict, pending: tuple[bool, dict]) -> dict:
    """The detached state of a searcher unpickled but not reopened yet (`pending` from attach_optuna)."""
    bound, trial_ids = pending
    return {**state, "_storage": None, "_ot_study": None, "_ot_trials": trial_ids, "_bound": bound}


def attach_optuna(search, state: dict) -> tuple[bool, dict]:
    """Put a detached `state` into `search`; returns (was it bound to a study, trial ids)."""
    state = dict(state)
    bound, trial_ids = state.pop("_bound"), state.pop("_ot_trials")
    search.__dict__.update(state)
    search._storage = search._ot_study = None
    search._ot_trials = {}
    return bound, trial_ids


def reopen_optuna(search, url: str, bound: bool, trial_ids: dict) -> None:
    """Open the study at `url` again (when it was bound) and its Optuna trials by id."""
    import optuna

    search._storage = optuna.storages.RDBStorage(url)
    search._ot_study = optuna.load_study(study_name=search._study_name, storage=search._storage,
                                         sampler=search._sampler) if bound else None
    search._ot_trials = {key: optuna.Trial(search._ot_study, trial_id) for key, trial_id in trial_ids.items()}


def adopt_optuna_trial(search, tune_trial_id: str, orphan):
    """Make the Optuna trial `orphan` (asked for before a driver crash, unknown to the restored
    searcher) the one of Tune trial `tune_trial_id`; sample the parameters it never got through
    Optuna's own sampling path (`Trial._suggest`: the public `suggest_*` need each parameter's kind)."""
    import optuna

    adopted = search._ot_trials[tune_trial_id] = optuna.Trial(search._ot_study, orphan._trial_id)
    for name, distribution in search._space.items():
        if name not in orphan.params:
            adopted._suggest(name, distribution)
    return adopted


def grid_exhausted(error: RuntimeError) -> bool:
    """Whether `error` is GridSampler calling `study.stop()` outside `optimize()` once its grid is
    used up (Optuna stores the trial's state before that: the error says nothing about the tell).
    Optuna raises a plain RuntimeError; only its text tells."""
    return "Study.stop" in str(error)


def shutdown_local_ray() -> None:
    """`ray.shutdown()` of the Ray this driver started, without the seconds Ray waits on its head
    processes. Ray stops the raylet first (gracefully: it ends the workers), then the GCS, the
    autoscaler monitor, ... one at a time, each with SIGTERM and up to 1 s before SIGKILL; the
    monitor always spends that second (its SIGTERM handler reports to the GCS, stopped just
    before) and the GCS often does. Once the raylet has exited, those two get the SIGKILL Ray would
    send a second later. No public API stops a local Ray other than one process at a time."""
    import threading

    import ray
    from ray._private import ray_constants
    from ray._private import worker as ray_worker

    node = ray_worker._global_node
    processes = getattr(node, "all_processes", None) or {}

    def started(kind: str) -> list:
        return [info.process for info in processes.get(kind, ())]

    raylets = started(ray_constants.PROCESS_TYPE_RAYLET)
    slow = started(ray_constants.PROCESS_TYPE_GCS_SERVER) + started(ray_constants.PROCESS_TYPE_MONITOR)

    def hurry() -> None:
        for raylet in raylets:
            raylet.wait()
        for process in slow:
            if process.poll() is None:
                process.kill()

    helper = threading.Thread(target=hurry, name="tuneloop-ray-shutdown", daemon=True)
    if raylets and slow:
        helper.start()
    ray.shutdown()
    if helper.is_alive():
        helper.join(timeout=5)


def preload_init_options(module: str) -> dict:
    """`ray.init` options for a new local Ray whose workers, the idle ones it starts with included,
    import `module` before taking any task or actor: Ray's `preload_python_modules` system setting
    (it only catches ImportError), which no public API sets. A job's `runtime_env` setup hook is no
    substitute: the idle workers, started before the job, lack it, so Ray would start new ones."""
    return {"_system_config": {"preload_python_modules": [module]}}


_TUNE_TRIAL_ENV: list = []  # Tune's (DEFAULT_ENV_VARS, ENV_VARS_TO_PROPAGATE), kept by inherit_trial_environment


def inherit_trial_environment() -> dict[str, str]:
    """For an embedded local Ray: the variables Tune would put into each trial actor's `runtime_env`
    (its DEFAULT_ENV_VARS; its ENV_VARS_TO_PROPAGATE are this process's own values), which Tune then
    leaves out until `propagate_trial_environment`. Any runtime_env makes Ray start a new worker
    for the actor instead of taking an idle one it started with (and preloaded: seconds); set in
    this process's environment while Ray starts, the variables reach the trials all the same (Ray's
    processes inherit it). Module-level settings of Tune's actor class cache: no API."""
    from ray.tune.execution import class_cache

    if not _TUNE_TRIAL_ENV:
        _TUNE_TRIAL_ENV[:] = [class_cache.DEFAULT_ENV_VARS, class_cache.ENV_VARS_TO_PROPAGATE]
    class_cache.DEFAULT_ENV_VARS, class_cache.ENV_VARS_TO_PROPAGATE = {}, set()
    return dict(_TUNE_TRIAL_ENV[0])


def propagate_trial_environment() -> None:
    """Tune's trial runtime_env as it was before `inherit_trial_environment` (for a Ray joined later)."""
    if _TUNE_TRIAL_ENV:
        from ray.tune.execution import class_cache

        class_cache.DEFAULT_ENV_VARS, class_cache.ENV_VARS_TO_PROPAGATE = _TUNE_TRIAL_ENV
        _TUNE_TRIAL_ENV.clear()
