"""The `sweep.search_space` section as Optuna distributions, and applying a trial's parameters
(dotted paths) onto the `run` section (Ray Tune's domains, for PBT: `tuneloop.tune.search_space`)."""

from __future__ import annotations

import copy
from typing import Any

import optuna

from tuneloop.config.schema import CategoricalParam, FloatParam, IntParam


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
    """A parameter value as tables show it: floats to 4 significant digits, the rest as is."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
