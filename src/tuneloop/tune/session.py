"""The driver's Ray session: which Ray to join, the Tune settings a sweep runs with, `ray.init`.

Ray Tune reads its settings from environment variables; `TUNE_SETTINGS` is the one list of those
tuneloop sets, each with why, applied by `apply_tune_settings` (a value the user set is kept).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import threading

from tuneloop.tune import _compat
from tuneloop.tune.credentials import keep_credentials_out_of_ray
from tuneloop.tune.trainable import THREAD_TIMEOUT_S

TUNE_SETTINGS = {
    # result.json and progress.csv, but no TensorBoard event files: TBX costs the driver CPU time that
    # the trials need on a small machine (the sweep adds Tune's JSON and CSV loggers itself)
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    # with verbose=0: no boxes (tuneloop.sweep.progress shows a compact table instead)
    "RAY_AIR_NEW_OUTPUT": "0",
    # (how often Tune snapshots the experiment: tuneloop.tune.state.snapshot_policy, per scheduler)
    # A stopped trial's thread still finishes its W&B run (flushing the offline files) after the
    # scheduler's STOP; before reusing its actor for the next trial Ray waits 2 s, then abandons the
    # actor, killing wandb mid-write (a stopped actor: see tuneloop.tune.trainable.trainable_class).
    "TUNE_FUNCTION_THREAD_TIMEOUT_S": str(THREAD_TIMEOUT_S),
}


def apply_tune_settings(settings: dict[str, str] = TUNE_SETTINGS) -> None:
    """Put `settings` into this process's environment, where Tune reads them; a variable the user
    set already wins."""
    for name, value in settings.items():
        os.environ.setdefault(name, value)


def ray_address(address: str | None) -> str:
    """What to `ray.init`: --address, else RAY_ADDRESS (which `ray job submit` sets), else "local":
    our own embedded Ray (Ray would otherwise join whatever cluster was last started here)."""
    return address or os.environ.get("RAY_ADDRESS") or "local"


def local_ray(address: str | None) -> bool:
    """Whether a sweep starts its own embedded local Ray (no --address, no RAY_ADDRESS, no Ray yet)."""
    if ray_address(address) != "local":
        return False
    import ray

    return not ray.is_initialized()


def embedded_ray_cpus(sweep) -> int | None:
    """The CPUs a sweep's embedded local Ray is started with (`sweep`: a SweepConfig): what its
    concurrent one-process trials hold (`max_concurrent_trials`, or `num_samples` if fewer, times
    `resources_per_trial.cpu`), at least 1 and at most the machine's. Ray starts one idle Python
    worker per CPU it has: a sweep of 2 trials at a time would otherwise start 32 on a 32-core
    machine, and a sweep of one at a time 2 on a 2-core one, each importing Ray for nothing. None
    (all of the machine's) for distributed trials, whose Train runs place their workers themselves."""
    need = sweep.resources_per_trial
    if need.workers > 1:
        return None
    slots = min(sweep.max_concurrent_trials, sweep.num_samples)
    return max(1, min(_compat.detected_cpus(), math.ceil(slots * need.cpu - 1e-9)))


def ensure_ray(address: str | None, *, trial_log=None, tune_trials: bool = False, preload: str | None = None,
               state_api: bool = False, num_cpus: int | None = None) -> bool:
    """Connect to `address` (or start an embedded local Ray) with the Tune settings applied; True
    when this call started Ray. `trial_log` (a `tuneloop.tune.trial_log.TrialLog`): the trials' own
    output goes there, prefixed by trial id, instead of Ray's worker lines (None: Ray prints them).
    `tune_trials`: Tune's trials will run there (an embedded local Ray's then go to the idle workers
    it started with: `_compat.inherit_trial_environment`; `stop_ray` undoes that). `preload`
    (`tuneloop.tune.preload.preload_value`): what those workers import as they start. `state_api`:
    an embedded local Ray starts its dashboard process (on a free port), which serves Ray's State
    API: Ray Train's placement-group cleaner needs it (distributed trials, `tuneloop.tune.distributed`).
    `num_cpus`: an embedded local Ray's CPUs (`embedded_ray_cpus`; None: the machine's)."""
    import ray

    apply_tune_settings()
    filter_ray_notices()
    _compat.count_callbacks_by_name()  # not by importing wandb and mlflow
    keep_credentials_out_of_ray()  # Ray Tune would log the driver's AWS keys (tuneloop.tune.credentials)
    if ray.is_initialized():
        return False
    options, environment = {}, {}
    if state_api:
        options.update(include_dashboard=True, dashboard_port=0)
    local = ray_address(address) == "local"
    if num_cpus is not None and local:
        options.update(num_cpus=num_cpus)
    trials_here = tune_trials and local
    if trials_here and preload is not None:
        from tuneloop.tune import preload as preloading

        options.update(_compat.preload_init_options(preloading.__name__))
        environment[preloading.ENV] = preload
    with (trials_inherit_environment(environment) if trials_here else contextlib.nullcontext()), \
            _quiet_token_auth_notice(), _interrupt_after():
        ray.init(address=ray_address(address), log_to_driver=True, configure_logging=True,
                 logging_level="WARNING", **{"include_dashboard": False, **options})
    if trial_log is not None:
        from tuneloop.tune.trial_log import attach

        attach(trial_log)
    return True


def stop_ray() -> None:
    """Stop the Ray that `ensure_ray` started (without Ray's serial waits: `_compat.shutdown_local_ray`)
    and give Tune back its trial runtime_env (for a Ray joined later in this process)."""
    try:
        _compat.shutdown_local_ray()
    finally:
        _compat.propagate_trial_environment()


def _transient_sync_race(record: logging.LogRecord) -> bool:
    """False for a sync that failed only because one of Tune's atomic-write temporary files was
    renamed while it was being copied: the file is under its final name, which the next sync copies.
    The syncer formats the traceback into its message; Tune's experiment state, which waits for that
    sync as it saves once more (a Ctrl-C), logs the exception itself."""
    exception = record.exc_info[1] if record.exc_info else None
    if exception is not None:
        last_line = f"{type(exception).__name__}: {exception}"
    else:
        last_line = record.getMessage().rstrip().rsplit("\n", 1)[-1]
    return not (last_line.startswith("FileNotFoundError") and _compat.ATOMIC_WRITE_TMP_MARK in last_line)


def _interrupt_notice(record: logging.LogRecord) -> bool:
    """Tune's Ctrl-C notices in tuneloop's words: the stop as one line; its "Tuner.restore" hint
    dropped (the sweep's summary says `tuneloop resume DIR`)."""
    message = record.getMessage()
    if message.startswith(_compat.TUNE_STOP_NOTICE):
        print("[tuneloop] stopping: the running trials stop and the sweep's state is saved once more "
              "(Ctrl-C again skips that)", flush=True)
        return False
    return not message.startswith(_compat.TUNE_RESUME_NOTICES)


def _no_metrics_notice(record: logging.LogRecord) -> bool:
    """False for the warning about trials without result files (the summary lists them as running)."""
    return not record.getMessage().startswith(_compat.NO_METRICS_NOTICE)


NOTICE_FILTERS = {  # Ray's logger → the filter that keeps its messages a sweep's user needs
    _compat.SYNCER_LOGGER: _transient_sync_race,  # any other failed sync is still shown
    _compat.EXPERIMENT_STATE_LOGGER: _transient_sync_race,
    _compat.TUNE_LOGGER: _interrupt_notice,
    _compat.ANALYSIS_LOGGER: _no_metrics_notice,
}


def filter_ray_notices() -> None:
    """Install `NOTICE_FILTERS` on Ray's loggers, once per process."""
    for name, keep in NOTICE_FILTERS.items():
        logger = logging.getLogger(name)
        if keep not in logger.filters:
            logger.addFilter(keep)


@contextlib.contextmanager
def _interrupt_after():
    """Ctrl-C inside the block takes effect when it ends: `ray.init` forks Ray's processes, and a
    KeyboardInterrupt landing in Python's fork handlers is printed and dropped ("Exception ignored
    in _releaseLock"), so the sweep would go on; deferred, it stops the command cleanly."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


@contextlib.contextmanager
def trials_inherit_environment(variables: dict[str, str]):
    """For a local Ray started in the block that will run Tune's trials: Tune's trial environment
    and `variables` are in this process's environment while it starts (Ray's processes inherit
    them) instead of in a runtime_env per trial actor, for which Ray would start a new worker
    through its setup_worker (a second interpreter importing Ray) rather than take an idle one
    (`_compat.inherit_trial_environment`). Given back to Tune if the block fails, by `stop_ray` after."""
    try:
        with _environment({**_compat.inherit_trial_environment(), **variables}):
            yield
    except BaseException:
        _compat.propagate_trial_environment()
        raise


@contextlib.contextmanager
def _environment(variables: dict[str, str]):
    """`variables` in this process's environment while the block runs (Ray's processes, started in
    it, inherit them), then as they were."""
    previous = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _quiet_token_auth_notice():
    """Ray 2.60 turns token authentication on for a new local Ray (RAY_AUTH_MODE unset) and logs
    a warning that it did: a notice of its default, not of a problem. The protection stays on."""
    logger = logging.getLogger(_compat.TOKEN_AUTH_LOGGER)

    def notice(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_compat.TOKEN_AUTH_NOTICE)

    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)
