"""The Tuner of a sweep, built from the `sweep` section out of tuneloop's Tune parts, or restored;
either way its parts are bound to where the sweep is now (`SweepParts`)."""

from __future__ import annotations

from dataclasses import dataclass

from tuneloop.config.schedulers import REGISTRY as SCHEDULERS
from tuneloop.config.schema import ExperimentConfig
from tuneloop.storage import SweepPlace, is_remote, tune_storage
from tuneloop.sweep.paths import trial_dirname


def build_trainable(cfg: ExperimentConfig):
    """`train_trial` with the run section and the resources per trial (also what a restore needs)."""
    from ray import tune

    from tuneloop.tune.distributed import fit_trial, tune_resources
    from tuneloop.tune.trainable import train_trial, trainable_class

    sweep, run = cfg.sweep, cfg.run
    run_dict = run.model_dump(mode="json", by_alias=True)
    if SCHEDULERS[sweep.scheduler.name].pauses:
        # A paused trial continues from its last checkpoint: without one every epoch, the epochs
        # after it would run twice. PBT also needs the checkpoint of the epoch it exploits.
        run_dict["checkpoint_config"].update(enabled=True, save_every_n_epochs=1)
    tags = (f"scheduler:{sweep.scheduler.name}", f"sampler:{sweep.sampler.name}")
    need = sweep.resources_per_trial
    if need.workers > 1:  # a Train run of `workers` data-parallel workers per trial
        function = tune.with_parameters(fit_trial, run=run_dict, experiment=run.name, tags=tags,
                                        workers=need.workers, cpu=need.cpu, gpu=need.gpu,
                                        max_failures=sweep.max_failures)
    else:
        function = tune.with_parameters(train_trial, run=run_dict, experiment=run.name, tags=tags,
                                        adopt=not SCHEDULERS[sweep.scheduler.name].pauses)
    return tune.with_resources(trainable_class(function), tune_resources(need))


def concurrency(cfg: ExperimentConfig) -> int:
    """`sweep.max_concurrent_trials`, capped (with a printed note) so that the workers of concurrent
    distributed trials fit on the Ray this driver joined: Tune only counts their drivers' CPU share."""
    import ray

    from tuneloop.tune.distributed import concurrent_trials, trial_demand

    sweep = cfg.sweep
    need = sweep.resources_per_trial
    if need.workers == 1:
        return sweep.max_concurrent_trials
    total = ray.cluster_resources()
    fit = concurrent_trials(need, total.get("CPU", 0), total.get("GPU", 0))
    if fit < sweep.max_concurrent_trials:
        cpu, gpu = trial_demand(need)
        print(f"[tuneloop] note: sweep.max_concurrent_trials={sweep.max_concurrent_trials} lowered to {fit}: a trial "
              f"holds {need.workers} workers x (cpu={need.cpu:g}, gpu={need.gpu:g}) + cpu={cpu - need.workers * need.cpu:g} "
              f"for its driver = cpu={cpu:g}, gpu={gpu:g}, and Ray has cpu={total.get('CPU', 0):g}, "
              f"gpu={total.get('GPU', 0):g}", flush=True)
        return fit
    return sweep.max_concurrent_trials


def param_space(cfg: ExperimentConfig) -> dict:
    """Tune's own search space: only PBT has one (it mutates configs; the others ask Optuna)."""
    from tuneloop.tune.search_space import to_tune

    return to_tune(cfg.sweep.search_space) if cfg.sweep.scheduler.name == "pbt" else {}


def build_tuner(cfg: ExperimentConfig, place: SweepPlace):
    """The Tuner for `cfg`: TruthfulOptunaSearch (or random search for PBT), the scheduler,
    resources per trial, failure and checkpoint settings, tuneloop's callbacks."""
    import optuna
    from ray import tune
    from tuneloop.config.schema import is_conditional
    from tuneloop.config.search_space import DefineByRun, to_optuna
    from tuneloop.sweep.progress import SweepProgress
    from tuneloop.tune import _compat
    from tuneloop.tune.driver_memory import TrimHeap
    from tuneloop.tune.loggers import build_loggers
    from tuneloop.tune.retention import KeepCheckpoints
    from tuneloop.tune.schedulers import build_scheduler
    from tuneloop.tune.search_space import to_tune
    from tuneloop.tune.searcher import StudyRecorder, TruthfulOptunaSearch
    from tuneloop.tune.state import StateBackup, TrialEnds

    sweep, run = cfg.sweep, cfg.run
    sampler = getattr(optuna.samplers, sweep.sampler.name)(**sweep.sampler.kwargs)
    callbacks = []
    scheduler_kwargs = dict(sweep.scheduler.kwargs)
    if sweep.scheduler.name == "pbt":
        # PBT mutates running trials and refuses a search algorithm: random initial configs,
        # and each finished trial is recorded in the Optuna study afterwards. It mutates the
        # keys in `mutate` (default: the optimizer's), which must not change the model's shape.
        mutate = scheduler_kwargs.pop("mutate", None) or [
            k for k in sweep.search_space if k.startswith("optimizer_config.")]
        searcher = None
        mutations = to_tune({k: sweep.search_space[k] for k in mutate})
        callbacks.append(StudyRecorder(sweep.optuna_storage, run.name, sweep.metric, sweep.mode,
                                       to_optuna(sweep.search_space), place=place))
    else:
        # a conditional space, or points to run first (possibly partial), go define-by-run
        by_run = is_conditional(sweep.search_space) or sweep.points_to_evaluate
        space = DefineByRun(sweep.search_space) if by_run else to_optuna(sweep.search_space)
        searcher = TruthfulOptunaSearch(space, metric=sweep.metric, mode=sweep.mode, sampler=sampler,
                                        study_name=run.name, study_url=sweep.optuna_storage, place=place,
                                        points_to_evaluate=[dict(p) for p in sweep.points_to_evaluate] or None)
        mutations = None
    ck = run.checkpoint_config
    callbacks += [KeepCheckpoints(ck.keep_last_k, ck.monitor, ck.mode), StateBackup(), TrialEnds(), TrimHeap(),
                  SweepProgress(run.name, sweep.scheduler.name, sweep.metric, sweep.mode, sweep.num_samples,
                                run.epochs, list(sweep.params()))]
    scheduler = build_scheduler(sweep.scheduler.name, scheduler_kwargs, metric=sweep.metric,
                                mode=sweep.mode, epochs=run.epochs, mutations=mutations)
    tune_config = tune.TuneConfig(
        search_alg=searcher, scheduler=scheduler, num_samples=sweep.num_samples,
        max_concurrent_trials=concurrency(cfg),
        # a distributed trial's actor only waits for its Train run (whose start-up dwarfs the actor's): not reused
        reuse_actors=sweep.resources_per_trial.workers == 1,
        trial_dirname_creator=trial_dirname, trial_name_creator=trial_dirname)
    callbacks += _compat.trial_loggers()  # result.json and progress.csv
    callbacks += build_loggers(cfg)  # sweep.loggers: TensorBoard, MLflow
    storage_path, storage_filesystem = tune_storage(sweep)
    run_config = tune.RunConfig(
        name=run.name, storage_path=storage_path, storage_filesystem=storage_filesystem, callbacks=callbacks,
        failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
        sync_config=tune.SyncConfig(sync_artifacts=is_remote(sweep.storage_path)),  # see trial.artifact_dir
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
        verbose=0)  # Ray's own wall of columns: off; SweepProgress shows a compact table instead
    return tune.Tuner(build_trainable(cfg), param_space=param_space(cfg), tune_config=tune_config,
                      run_config=run_config)


def restore_tuner(cfg: ExperimentConfig, place: SweepPlace):
    """The interrupted sweep's Tuner, restored from Tune's state in the storage: unfinished and
    errored trials continue, with the searcher, scheduler and callbacks Tune pickled."""
    from ray import tune

    filesystem = tune_storage(cfg.sweep)[1]
    storage_path = place.storage.root if filesystem is not None else place.storage.uri  # Tune's own spelling
    return tune.Tuner.restore(storage_path, trainable=build_trainable(cfg), resume_unfinished=True,
                              resume_errored=True, storage_filesystem=filesystem,
                              param_space=param_space(cfg) or None)


@dataclass
class SweepParts:
    """The parts of a Tuner the driver talks to: bound to the sweep's place, the live table, the
    record of which trials ended."""

    progress: object  # tuneloop.sweep.progress.SweepProgress
    trial_ends: object  # tuneloop.tune.state.TrialEnds

    @classmethod
    def bind(cls, tuner, place: SweepPlace) -> "SweepParts":
        """Tell every part of `tuner` that keeps files where the sweep is now (`bind(place)`): those
        built for it, or those Tune unpickled on a restore, which hold no paths of their own."""
        from tuneloop.sweep.progress import SweepProgress
        from tuneloop.tune import _compat
        from tuneloop.tune.state import TrialEnds

        parts = [part for part in _compat.tuner_parts(tuner) if part is not None]
        for part in parts:
            if callable(getattr(part, "bind", None)):
                part.bind(place)
        return cls(progress=next(p for p in parts if isinstance(p, SweepProgress)),
                   trial_ends=next(p for p in parts if isinstance(p, TrialEnds)))
