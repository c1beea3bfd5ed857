"""How a trial ended and which trial is best: one rule for every view of a sweep.

The Optuna study, the results table (`results.csv`), `best.yaml`, the live table and `tuneloop
report` all decide with these two functions, on the sweep's own metric (`sweep.metric`, `mode`):

- `outcome`: a finished trial is *failed* when it raised, reported nothing, or its last loss or
  metric is NaN/inf; *complete* when its last report says it reached its own end (`trial_done`:
  its last epoch, or its own early stop); else *pruned* (a scheduler stopped it).
- `ranked` / `best`: the best trial is the complete one whose last value of the metric is best
  by `mode`. Pruned, failed and running trials never are (Optuna's `study.best_trial` rule: a
  pruned trial's last value comes from fewer epochs, not from the configuration's end).
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")

COMPLETE, PRUNED, FAILED, RUNNING = "complete", "pruned", "failed", "running"


def finite(value) -> bool:
    """A real number that is neither NaN nor infinite (bools are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def outcome(result: dict | None, error: bool, metric: str) -> tuple[str, float | None]:
    """(state, value to tell Optuna) of a finished trial from its last result (see the module)."""
    value = (result or {}).get(metric)
    if error or not result or not finite(value) or not finite(result.get("val_loss", 0.0)):
        return FAILED, None
    if result.get("trial_done"):
        return COMPLETE, float(value)
    return PRUNED, None


def ranked(items: Iterable[T], *, mode: str, state: Callable[[T], str], value: Callable[[T], object]) -> list[T]:
    """The complete items with a finite value, best first by `mode` ("min" or "max"); ties keep
    the items' order."""
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be one of 'min', 'max', but got mode={mode!r}")
    sign = 1 if mode == "min" else -1
    candidates = [item for item in items if state(item) == COMPLETE and finite(value(item))]
    return sorted(candidates, key=lambda item: sign * float(value(item)))


def best(items: Iterable[T], *, mode: str, state: Callable[[T], str], value: Callable[[T], object]) -> T | None:
    """The best complete item (see `ranked`), or None when no item completed."""
    order = ranked(items, mode=mode, state=state, value=value)
    return order[0] if order else None
