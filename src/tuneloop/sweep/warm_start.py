"""`sweep.warm_start_from`: a new sweep's study seeded with the finished trials of an earlier
sweep of the same search space (Optuna's `study.add_trials`), so the sampler starts from what
that sweep learned. The earlier trials are in the study only: Tune runs `num_samples` new ones."""

from __future__ import annotations

from pathlib import Path

from tuneloop.config.errors import UserError
from tuneloop.config.loading import load_experiment
from tuneloop.config.schema import ExperimentConfig
from tuneloop.sweep.paths import EXPERIMENT_FILE, STUDY_FILE

FINISHED = ("COMPLETE", "PRUNED", "FAIL")  # the states of the trials a warm start takes
KEY = "sweep.warm_start_from"


def source_of(cfg: ExperimentConfig) -> tuple[str, str] | None:
    """(study URL, study name) of the sweep `cfg` warm-starts from, checked: a sweep directory whose
    search space is this one's, with a readable study (a UserError naming the key otherwise)."""
    if cfg.sweep.warm_start_from is None:
        return None
    import optuna

    directory = Path(cfg.sweep.warm_start_from).expanduser().resolve()
    if not (directory / EXPERIMENT_FILE).is_file():
        raise UserError("must be the experiment directory of an earlier sweep (holding experiment.yaml)",
                        key=KEY, value=cfg.sweep.warm_start_from)
    earlier = load_experiment(directory / EXPERIMENT_FILE)
    if dump(earlier) != dump(cfg):
        raise UserError("must be a sweep of the same search space (sweep.search_space of its experiment.yaml "
                        "differs)", key=KEY, value=cfg.sweep.warm_start_from)
    url = earlier.sweep.optuna_storage or f"sqlite:///{directory / STUDY_FILE}"
    try:
        optuna.load_study(study_name=earlier.run.name, storage=url)
    except Exception as exc:  # no such study, or an unreadable storage
        raise UserError(f"must hold the earlier sweep's Optuna study ({type(exc).__name__}: {exc})", key=KEY,
                        value=cfg.sweep.warm_start_from) from None
    return url, earlier.run.name


def dump(cfg: ExperimentConfig) -> dict:
    return cfg.model_dump(mode="json")["sweep"]["search_space"]


def warm_start(cfg: ExperimentConfig, study_url: str, source: tuple[str, str]) -> int:
    """Add the finished trials of the `source` study to this sweep's study; return how many."""
    import optuna

    url, name = source
    earlier = optuna.load_study(study_name=name, storage=url)
    study = optuna.load_study(study_name=cfg.run.name, storage=study_url)
    added = [optuna.trial.create_trial(
        state=trial.state, params=trial.params, distributions=trial.distributions,
        value=trial.value if trial.state == optuna.trial.TrialState.COMPLETE else None,
        intermediate_values=trial.intermediate_values,
        user_attrs={**trial.user_attrs, "warm_start_from": f"{cfg.sweep.warm_start_from}#{trial.number}"})
        for trial in earlier.get_trials(deepcopy=False) if trial.state.name in FINISHED]
    study.add_trials(added)
    return len(added)
