"""The `sweep.search_space` section as Optuna distributions or as a define-by-run function (a
conditional space, or one with points to evaluate first), and applying a trial's parameters
(dotted paths) onto the `run` section (Ray Tune's domains, for PBT: `tuneloop.tune.search_space`)."""

from __future__ import annotations

import copy
from typing import Any

import optuna

from tuneloop.config.schema import CategoricalParam, FloatParam, IntParam, flat_params


def to_optuna(space: dict) -> dict[str, optuna.distributions.BaseDistribution]:
    """Each parameter as an Optuna distribution (float/int with log and step, categorical)."""
    distributions = {}
    for key, param in space.items():
        if isinstance(param, FloatParam):
            distributions[key] = optuna.distributions.FloatDistribution(
                param.low, param.high, log=param.log, step=param.step)
        elif isinstance(param, IntParam):
            distributions[key] = optuna.distributions.IntDistribution(
                param.low, param.high, log=param.log, step=param.step or 1)
        elif isinstance(param, CategoricalParam):
            distributions[key] = optuna.distributions.CategoricalDistribution(param.choices)
        else:  # pragma: no cover - the schema admits only the three kinds
            raise TypeError(f"unknown parameter kind {type(param).__name__}")
    return distributions


class DefineByRun:
    """The search space as Optuna's define-by-run function (what Ray's OptunaSearch takes as
    `space`): each parameter suggested in turn, and a categorical parameter's sub-space only for
    the choice made, so each Optuna trial holds only the parameters it used. Picklable (Tune
    keeps the searcher, this with it, in its experiment state)."""

    def __init__(self, space: dict):
        self.space = space

    def __call__(self, trial) -> None:
        self._sample(trial, self.space)

    def _sample(self, trial, space: dict) -> None:
        distributions = to_optuna(space)
        for key, param in space.items():
            value = suggest(trial, key, distributions[key])
            chosen = getattr(param, "subspaces", {}).get(str(value))
            if chosen:
                self._sample(trial, chosen)


def suggest(trial, name: str, distribution: optuna.distributions.BaseDistribution):
    """`trial.suggest_*` for `distribution` (Optuna's public API, one call per kind)."""
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return trial.suggest_categorical(name, distribution.choices)
    if isinstance(distribution, optuna.distributions.IntDistribution):
        step = distribution.step if not distribution.log else 1
        return trial.suggest_int(name, distribution.low, distribution.high, step=step, log=distribution.log)
    return trial.suggest_float(name, distribution.low, distribution.high, step=distribution.step,
                               log=distribution.log)


def all_distributions(space: dict) -> dict[str, optuna.distributions.BaseDistribution]:
    """Every parameter's distribution, the sub-spaces' included (each trial uses a part)."""
    return to_optuna(flat_params(space))


def apply_params(run: dict, params: dict[str, Any]) -> dict:
    """A copy of the `run` mapping with each dotted key of `params` set (e.g. `optimizer_config.lr`,
    or `callbacks.0.max_norm`: a number indexes a list)."""
    run = copy.deepcopy(run)
    for dotted, value in params.items():
        node = run
        *parents, last = dotted.split(".")
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        node[last] = value
    return run


def short_value(value) -> str:
    """A parameter value as tables show it: floats to 4 significant digits, `-` for a parameter the
    trial does not use (a conditional space), the rest as is."""
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
