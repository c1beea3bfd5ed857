"""`tuneloop sweep`: the sweep driver, from the checks to the exit status.

    run_sweep:  checks (nothing written yet) → lock the experiment directory → drive
    drive:      Ray → checks against the cluster → the Tuner, its parts bound → fit → finish
    finish:     histories tidied → results.csv, best.yaml, the table → sweep_done → exit status

`tuneloop resume` (`tuneloop.sweep.resume`) drives a restored Tuner the same way.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

from tuneloop._io import atomic_write_text
from tuneloop.config.schema import ExperimentConfig
from tuneloop.config.yaml12 import dump_yaml
from tuneloop.storage import TRIAL_ERROR, SweepPlace, tune_storage
from tuneloop.sweep.checks import (check_cluster_resources, check_local_resources, check_new_experiment,
                                   check_search_space, check_shared_storage, check_storage, check_study, unusable)
from tuneloop.sweep.locking import DirectoryUnusable, clear_directory, experiment_lock
from tuneloop.sweep.paths import DONE_FILE, DRIVER_FILES, EXPERIMENT_FILE, sweep_place
from tuneloop.sweep.results import (HISTORY_REWINDS, drop_superseded, print_table, summarize, tidy_histories,
                                    write_results)
from tuneloop.sweep.warm_start import source_of, warm_start

INTERRUPTED = 130  # the exit status of a sweep that stopped before every trial ended (as after Ctrl-C)


def run_sweep(cfg: ExperimentConfig, *, address: str | None = None, quiet: bool = False,
              overwrite: bool = False, preload_modules: list[str] = ()) -> int:
    """Run the sweep of `cfg`; print the table and the best config; return the exit status.
    Raises UserError (exit 2) before anything is written when the sweep cannot run.
    `preload_modules`: what the preflight imported (`check_experiment`), imported by Ray's idle workers
    before the first trial starts (`tuneloop.tune.preload`)."""
    place = sweep_place(cfg)
    try:
        return _run_sweep(cfg, place, address=address, quiet=quiet, overwrite=overwrite,
                          preload_modules=preload_modules)
    except KeyboardInterrupt:  # before Tune took over Ctrl-C (it ends its own fit with a summary)
        return interrupted_early(cfg, place, resume=False)


def _run_sweep(cfg: ExperimentConfig, place: SweepPlace, *, address: str | None, quiet: bool,
               overwrite: bool, preload_modules: list[str]) -> int:
    from tuneloop.tune.session import local_ray

    check_search_space(cfg)
    check_storage(cfg, place.storage)
    check_new_experiment(cfg, place.directory, place.storage, overwrite=overwrite)
    old_study = check_study(cfg, overwrite=overwrite)
    warm_source = source_of(cfg)
    if local_ray(address):
        check_local_resources(cfg)

    def start():  # the Tuner, once Ray is up and the storage suits the cluster
        from tuneloop.sweep.tuner import build_tuner

        if overwrite:
            clear_directory(place.directory)  # all but the lock this driver holds
            if place.storage.exists():
                place.storage.delete_dir("")
        if old_study:  # in sweep.optuna_storage, outside the experiment directory
            import optuna

            optuna.delete_study(study_name=cfg.run.name, storage=cfg.sweep.optuna_storage)
        place.directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(place.directory / EXPERIMENT_FILE, dump_yaml(cfg.model_dump(mode="json", by_alias=True)))
        if not place.storage.is_local:  # so that even a crashed first run can be found from its URI
            place.storage.upload(place.directory, [EXPERIMENT_FILE])
        tuner = build_tuner(cfg, place)  # creates the study
        if warm_source is not None:
            added = warm_start(cfg, place.study_url, warm_source)
            print(f"[tuneloop] warm start: {added} finished trial(s) of {cfg.sweep.warm_start_from} in the study",
                  flush=True)
        return tuner

    key, value = (("sweep.storage_path", cfg.sweep.storage_path) if place.storage.is_local
                  else ("sweep.local_dir", cfg.sweep.local_dir))
    with holding(place.directory, "run", key=key, value=value):  # one driver per experiment directory
        return drive(cfg, place, start, address, quiet, preload_modules=preload_modules)


def interrupted_early(cfg: ExperimentConfig, place: SweepPlace, *, resume: bool) -> int:
    """Ctrl-C before Tune's fit began (imports, checks, Ray starting) or during its final save:
    Ray left, one line saying what the user can do, exit status 130 — no traceback."""
    import ray

    from tuneloop.tune.session import stop_ray

    if ray.is_initialized():
        stop_ray()
    directory = place.directory
    if tune_state_exists(cfg, place):
        print(f"[tuneloop] interrupted; continue with `tuneloop resume {directory}`", flush=True)
    elif resume:
        print(f"[tuneloop] interrupted before the sweep went on; resume it again: `tuneloop resume {directory}`",
              flush=True)
    elif directory.exists():
        print(f"[tuneloop] interrupted before any trial started; start again with --overwrite "
              f"(the experiment directory {directory} holds no trial)", flush=True)
    else:
        print("[tuneloop] interrupted before the sweep started; nothing was written", flush=True)
    return INTERRUPTED


def tune_state_exists(cfg: ExperimentConfig, place: SweepPlace) -> bool:
    """Whether Tune saved the experiment's state in the storage (then `tuneloop resume` can continue)."""
    from ray import tune

    filesystem = tune_storage(cfg.sweep)[1]
    path = place.storage.root if filesystem is not None else place.storage.uri  # as Tune spells it
    try:
        return tune.Tuner.can_restore(path, storage_filesystem=filesystem)
    except Exception:  # no storage directory yet, or a storage that cannot be read now
        return False


@contextmanager
def holding(directory: Path, doing: str, *, key: str, value: str):
    """The experiment directory's lock (`tuneloop.sweep.locking`) while the block runs; a directory
    that cannot be created or locked is a UserError naming `key` and `value`."""
    try:
        with experiment_lock(directory, doing):
            yield
    except DirectoryUnusable as exc:  # taking the lock failed: nothing was started or written
        raise unusable(exc.error, directory, key, value) from None


def drive(cfg: ExperimentConfig, place: SweepPlace, make_tuner, address: str | None, quiet: bool, *,
          preload_modules: list[str] = ()) -> int:
    """Start (or join) Ray, build or restore the Tuner with `make_tuner`, bind its parts to `place`,
    fit it, then `finish`. An embedded local Ray's workers import what the trials need (the
    preflight's `preload_modules` among it) as Ray starts."""
    import optuna

    from tuneloop.config.schedulers import REGISTRY as SCHEDULERS
    from tuneloop.sweep.tuner import SweepParts
    from tuneloop.tune._compat import results_without_histories, version_warnings
    from tuneloop.tune.preload import preload_for
    from tuneloop.tune.session import embedded_ray_cpus, ensure_ray, stop_ray
    from tuneloop.tune.state import publish_final, snapshot_policy
    from tuneloop.tune.trial_log import TrialLog

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created ..." lines
    for warning in version_warnings():
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    trial_log = TrialLog()  # the trials' own lines, printed by the live table (above it)
    started = ensure_ray(address, trial_log=trial_log, tune_trials=True, preload=preload_for(cfg, preload_modules),
                         state_api=cfg.sweep.resources_per_trial.workers > 1, num_cpus=embedded_ray_cpus(cfg.sweep))
    try:
        check_shared_storage(cfg, place.storage)
        check_cluster_resources(cfg)
        tuner = make_tuner()
        parts = SweepParts.bind(tuner, place)
        parts.progress.display(quiet=quiet, trial_log=trial_log)
        with snapshot_policy(SCHEDULERS[cfg.sweep.scheduler.name].pauses), results_without_histories():
            results = tuner.fit()
        if parts.trial_ends.all_ended():  # an interrupted sweep keeps the state Tune saved when it stopped
            publish_final(parts.trial_ends.trials, place.storage)
    finally:
        if started:
            stop_ray()
    return finish(cfg, place, results, parts.trial_ends)


def finish(cfg: ExperimentConfig, place: SweepPlace, results, trial_ends) -> int:
    """Results files and the table; `sweep_done` once every trial ended; the exit status (0; 1 when
    every trial failed; 130 when trials are left for `tuneloop resume`)."""
    directory, storage = place.directory, place.storage
    if cfg.sweep.scheduler.name not in HISTORY_REWINDS:
        tidy_histories(storage)
    rows = summarize(cfg, results, trial_ends, storage)
    best = write_results(cfg, rows, directory)
    print_table(cfg, rows, best)
    unfinished = [r for r in rows if r.state == "running"]
    done = not unfinished and len(rows) >= cfg.sweep.num_samples
    if done:
        drop_superseded(storage, trial_ends.trials)
        atomic_write_text(directory / DONE_FILE, f"{len(rows)} trials\n")
    if not storage.is_local:
        storage.upload(directory, DRIVER_FILES)
        print(f"trials and checkpoints: {storage.uri}")
    print(f"experiment directory: {directory}")
    if not done:
        print(f"interrupted: {len(unfinished)} trial(s) unfinished, {cfg.sweep.num_samples - len(rows)} not "
              f"started; continue with `tuneloop resume {directory}`")
        return INTERRUPTED
    if rows and all(r.state == "failed" for r in rows):
        print(f"error: all {len(rows)} trials failed; tracebacks in {storage.uri}/trial_*/{TRIAL_ERROR}")
        return 1
    return 0
