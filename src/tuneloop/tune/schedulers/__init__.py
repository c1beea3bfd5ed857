"""Trial schedulers by name (`sweep.scheduler.name`): built and checked from the registry in
`tuneloop.config.schedulers`.

`fifo`, `asha`, `hyperband`, `median` and `pbt` are Ray Tune's own (`asha` keeps its rungs across a
resume: `asha.py`; the pausing ones never pause a finished trial: `pausing.py`); `pfl` stops a trial
once its predicted final loss is worse than the k-th best final val_loss of the completed trials
(`pfl.py`).
"""

from __future__ import annotations

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from tuneloop.config.errors import UserError, Verbatim
from tuneloop.config.imports import check_kwargs, resolve
from tuneloop.config.schedulers import REGISTRY
from tuneloop.config.schema import ExperimentConfig
from tuneloop.tune.schedulers.asha import PersistentASHA
from tuneloop.tune.schedulers.base import TIME_ATTR, PersistentState
from tuneloop.tune.schedulers.pausing import PBT, HyperBand, MedianStopping, StopFinished
from tuneloop.tune.schedulers.pfl import (DEFAULT_PREDICTOR, PREDICTORS, SWEEP_PREDICTOR,
                                          PredictedFinalLossScheduler)

__all__ = ["TIME_ATTR", "PersistentState", "PersistentASHA", "HyperBand", "MedianStopping", "PBT", "StopFinished",
           "PredictedFinalLossScheduler", "PREDICTORS", "DEFAULT_PREDICTOR", "SWEEP_PREDICTOR", "build_scheduler",
           "check_scheduler", "scheduler_class"]


def scheduler_class(name: str) -> type:
    """The class that implements scheduler `name`."""
    return resolve(REGISTRY[name].cls, key="sweep.scheduler.name")


def build_scheduler(name: str, kwargs: dict, *, metric: str, mode: str, epochs: int,
                    mutations: dict | None = None) -> TrialScheduler:
    """The scheduler `name` with the user's `kwargs` and tuneloop's defaults (a scheduler with a
    state file keeps it in the sweep's local directory once bound: `PersistentState.bind`)."""
    spec = REGISTRY[name]
    if name == "fifo":
        return FIFOScheduler()
    if name == "pfl":
        return PredictedFinalLossScheduler(**{"predictor": SWEEP_PREDICTOR, "calibrate": True, **kwargs},
                                           max_t=epochs, state_path=spec.state_file)
    common = {"time_attr": TIME_ATTR, "metric": metric, "mode": mode}
    if name in ("asha", "hyperband"):
        common["max_t"] = epochs
    if spec.state_file:
        common["state_path"] = spec.state_file
    if name == "pbt":
        kwargs = {"perturbation_interval": max(1, epochs // 5), **kwargs}
        common["hyperparam_mutations"] = mutations or {}
    return scheduler_class(name)(**common, **kwargs)


def check_scheduler(cfg: ExperimentConfig) -> None:
    """`sweep.scheduler`'s keyword arguments against the class that implements it (Ray's own
    signatures: so this check lives with Ray, not in `tuneloop.config`). Raises UserError."""
    scheduler = cfg.sweep.scheduler
    cls, reserved = scheduler_class(scheduler.name), REGISTRY[scheduler.name].set_by_tuneloop
    kwargs = dict(scheduler.kwargs)
    for name in kwargs:
        if name in reserved:
            raise UserError("is set by tuneloop from the sweep section", key=f"sweep.scheduler.{name}",
                            value=kwargs[name])
    if scheduler.name == "pbt":
        mutate = kwargs.pop("mutate", None) or []
        for key in mutate:
            if key not in cfg.sweep.search_space:
                raise UserError("must name search-space keys", key="sweep.scheduler.mutate", value=key,
                                choices=list(cfg.sweep.search_space))
    check_kwargs(cls, kwargs, key="sweep.scheduler", path=f"{scheduler.name} scheduler ({cls.__name__})",
                 supplied=reserved, check_required=False, strict=True)
    grace, epochs = kwargs.get("grace_period"), cfg.run.epochs
    if isinstance(grace, (int, float)) and grace >= epochs and "epochs" not in cfg.sweep.params():
        raise UserError("grace_period < run.epochs must hold (a trial is first compared with the others after "
                        "grace_period epochs; at or past its last epoch none is ever stopped)",
                        key="sweep.scheduler.grace_period",
                        value=Verbatim(f"grace_period={grace:g}, run.epochs={epochs}"))
    if scheduler.name == "pfl":
        if kwargs.get("predictor", SWEEP_PREDICTOR) not in PREDICTORS:
            raise UserError("must name a predictor", key="sweep.scheduler.predictor", value=kwargs["predictor"],
                            choices=PREDICTORS)
        if not isinstance(kwargs.get("k", 1), int) or kwargs.get("k", 1) < 1:
            raise UserError("k >= 1 must hold", key="sweep.scheduler.k", value=kwargs["k"])
