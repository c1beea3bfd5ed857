"""Trial schedulers by name (`sweep.scheduler.name`) and `pfl`, tuneloop's learning-curve scheduler.

`fifo`, `asha`, `hyperband`, `median` and `pbt` are Ray Tune's own; `pfl` stops a trial once its
`predicted_final_loss` (LossPredictionCallback) is worse than the k-th best final val_loss of the
trials that completed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ray.tune.schedulers import (ASHAScheduler, FIFOScheduler, HyperBandScheduler, MedianStoppingRule,
                                 PopulationBasedTraining, TrialScheduler)

from tuneloop.checkpointing import atomic_write_text

TIME_ATTR = "training_iteration"  # epochs trained by the trial (1-based), the schedulers' clock


class PredictedFinalLossScheduler(FIFOScheduler):
    """Stop a trial whose predicted final loss is worse than the k-th best completed final val_loss.

    Acts only once `n_startup_trials` trials completed and the trial has trained `n_warmup_epochs`
    epochs. NaN-safe: non-finite finals are never counted and non-finite predictions never stop a
    trial. With `state_path` its state (the finals) is written after each change and read back when
    the scheduler is created or unpickled, so it survives `Tuner.restore`.
    """

    def __init__(self, k: int = 3, n_startup_trials: int = 5, n_warmup_epochs: int = 10,
                 prediction: str = "predicted_final_loss", final: str = "val_loss",
                 state_path: str | None = None):
        super().__init__()
        if k < 1:
            raise ValueError(f"k >= 1 must hold, but got k={k}")
        self.k, self.n_startup_trials, self.n_warmup_epochs = k, n_startup_trials, n_warmup_epochs
        self.prediction, self.final = prediction, final
        self.state_path = state_path
        self.finals: dict[str, float] = {}  # trial id → final val_loss of completed trials
        self.stopped: list[str] = []
        self._load()

    def threshold(self) -> float | None:
        """The k-th best final loss, or None while fewer than max(k, n_startup_trials) completed."""
        finals = sorted(self.finals.values())
        if len(finals) < max(self.k, self.n_startup_trials):
            return None
        return finals[self.k - 1]

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        predicted = result.get(self.prediction)
        threshold = self.threshold()
        if (threshold is None or result.get(TIME_ATTR, 0) < self.n_warmup_epochs
                or not isinstance(predicted, (int, float)) or not math.isfinite(predicted)):
            return TrialScheduler.CONTINUE
        if predicted > threshold:
            self.stopped.append(trial.trial_id)
            self._save()
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        value = (result or {}).get(self.final)
        if (result or {}).get("trial_done") and isinstance(value, (int, float)) and math.isfinite(value):
            self.finals[trial.trial_id] = float(value)
            self._save()

    def debug_string(self) -> str:
        return (f"Using PredictedFinalLoss: {len(self.finals)} finals, threshold {self.threshold()}, "
                f"{len(self.stopped)} stopped")

    def _save(self) -> None:
        if self.state_path:
            atomic_write_text(Path(self.state_path),
                              json.dumps({"finals": self.finals, "stopped": self.stopped}))

    def _load(self) -> None:
        if self.state_path and Path(self.state_path).exists():
            state = json.loads(Path(self.state_path).read_text())
            self.finals, self.stopped = state["finals"], state["stopped"]

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._load()


# name → (class, keyword arguments tuneloop sets itself)
SCHEDULERS = {
    "fifo": (FIFOScheduler, ()),
    "asha": (ASHAScheduler, ("time_attr", "metric", "mode", "max_t")),
    "hyperband": (HyperBandScheduler, ("time_attr", "metric", "mode", "max_t")),
    "median": (MedianStoppingRule, ("time_attr", "metric", "mode")),
    "pbt": (PopulationBasedTraining, ("time_attr", "metric", "mode", "hyperparam_mutations")),
    "pfl": (PredictedFinalLossScheduler, ("state_path",)),
}


def build_scheduler(name: str, kwargs: dict, *, metric: str, mode: str, epochs: int,
                    mutations: dict | None = None, state_dir: Path | None = None) -> TrialScheduler:
    """The scheduler `name` with the user's `kwargs` and tuneloop's defaults."""
    if name == "fifo":
        return FIFOScheduler()
    if name == "pfl":
        state_path = str(state_dir / "pfl_state.json") if state_dir else None
        return PredictedFinalLossScheduler(**kwargs, state_path=state_path)
    common = {"time_attr": TIME_ATTR, "metric": metric, "mode": mode}
    if name in ("asha", "hyperband"):
        common["max_t"] = epochs
    if name == "pbt":
        kwargs = {"perturbation_interval": max(1, epochs // 5), **kwargs}
        common["hyperparam_mutations"] = mutations or {}
    return SCHEDULERS[name][0](**common, **kwargs)
