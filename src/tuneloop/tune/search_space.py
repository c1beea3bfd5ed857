"""The `sweep.search_space` section as Ray Tune domains (for PBT, which mutates configs itself)."""

from __future__ import annotations

from typing import Any

from tuneloop.config.schema import CategoricalParam, FloatParam


def to_tune(space: dict) -> dict[str, Any]:
    """Each parameter as a Ray Tune domain (for schedulers that mutate configs, like PBT)."""
    from ray import tune

    domains = {}
    for key, param in space.items():
        if isinstance(param, CategoricalParam):
            domains[key] = tune.choice(param.choices)
        elif isinstance(param, FloatParam):
            if param.step is not None:
                domains[key] = tune.quniform(param.low, param.high, param.step)
            else:
                domains[key] = (tune.loguniform if param.log else tune.uniform)(param.low, param.high)
        else:
            if param.log:
                domains[key] = tune.lograndint(param.low, param.high + 1)
            else:
                domains[key] = tune.qrandint(param.low, param.high, param.step or 1)
    return domains
