"""Trial schedulers by name (`sweep.scheduler.name`) and `pfl`, tuneloop's learning-curve scheduler.

`fifo`, `asha`, `hyperband`, `median` and `pbt` are Ray Tune's own; `pfl` stops a trial once its
`predicted_final_loss` (LossPredictionCallback) is worse than the k-th best final val_loss of the
trials that completed.
"""

from __future__ import annotations

import json
import math
import pickle

from ray.tune.schedulers import (ASHAScheduler, FIFOScheduler, HyperBandScheduler, MedianStoppingRule,
                                 PopulationBasedTraining, TrialScheduler)

from tuneloop.checkpointing import atomic_write_bytes, atomic_write_text
from tuneloop.storage import state_file

TIME_ATTR = "training_iteration"  # epochs trained by the trial (1-based), the schedulers' clock


class PredictedFinalLossScheduler(FIFOScheduler):
    """Stop a trial whose predicted final loss is worse than the k-th best completed final val_loss.

    Acts only once `n_startup_trials` trials completed and the trial has trained `n_warmup_epochs`
    epochs. NaN-safe: non-finite finals are never counted and non-finite predictions never stop a
    trial. With `state_path` (absolute, or a name in the sweep's local directory) its state (the
    finals) is written after each change and read back when the scheduler is created or unpickled,
    so it survives `Tuner.restore`.
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
        if trial.trial_id in self.stopped:  # stopped before a driver crash, resumed by the restore
            return TrialScheduler.STOP
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
            atomic_write_text(state_file(self.state_path),
                              json.dumps({"finals": self.finals, "stopped": self.stopped}))

    def _load(self) -> None:
        path = state_file(self.state_path) if self.state_path else None
        if path is not None and path.exists():
            state = json.loads(path.read_text())
            self.finals, self.stopped = state["finals"], state["stopped"]

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._load()


class PersistentASHA(ASHAScheduler):
    """Ray's ASHA, whose rungs survive `Tuner.restore` (Ray does not save scheduler state).

    After every result that may change a rung its state is written to `state_path` (atomically);
    when Tune unpickles the scheduler from `tuner.pkl` on restore, that state is read back.
    """

    def __init__(self, time_attr: str = TIME_ATTR, metric: str | None = None, mode: str | None = None,
                 max_t: int = 100, grace_period: int = 1, reduction_factor: float = 4, brackets: int = 1,
                 stop_last_trials: bool = True, state_path: str | None = None):
        super().__init__(time_attr=time_attr, metric=metric, mode=mode, max_t=max_t, grace_period=grace_period,
                         reduction_factor=reduction_factor, brackets=brackets, stop_last_trials=stop_last_trials)
        self.state_path = state_path
        self.stopped: set[str] = set()  # trials this scheduler stopped: they stay stopped after a restore

    def on_trial_result(self, tune_controller, trial, result):
        if trial.trial_id in self.stopped:  # stopped before a driver crash, resumed by the restore
            return TrialScheduler.STOP
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP:
            self.stopped.add(trial.trial_id)
        self._persist()
        return decision

    def on_trial_complete(self, tune_controller, trial, result):
        super().on_trial_complete(tune_controller, trial, result)
        self._persist()

    def on_trial_remove(self, tune_controller, trial):
        super().on_trial_remove(tune_controller, trial)
        self._persist()

    def _persist(self) -> None:
        if self.state_path:
            atomic_write_bytes(state_file(self.state_path), pickle.dumps(self.__dict__))

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        path = state_file(self.state_path) if self.state_path else None
        if path is not None and path.exists():
            self.__dict__.update(pickle.loads(path.read_bytes()))


class _StopFinished:
    """A trial's own last result (`trial_done`: its last epoch, or its own early stop) is answered
    STOP, never PAUSE. The trial's function has returned by then: a paused trial could never be
    resumed, and Tune would wait for it forever (seen with HyperBand at max_t)."""

    def on_trial_result(self, tune_controller, trial, result):
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.PAUSE and result.get("trial_done"):
            return TrialScheduler.STOP
        return decision


class HyperBand(_StopFinished, HyperBandScheduler):
    """Ray's HyperBand; a finished trial is never paused."""


class MedianStopping(_StopFinished, MedianStoppingRule):
    """Ray's median stopping rule; a finished trial is never paused."""


class PBT(_StopFinished, PopulationBasedTraining):
    """Ray's population based training; a finished trial is never paused."""


# name → (class, keyword arguments tuneloop sets itself)
SCHEDULERS = {
    "fifo": (FIFOScheduler, ()),
    "asha": (PersistentASHA, ("time_attr", "metric", "mode", "max_t", "state_path")),
    "hyperband": (HyperBand, ("time_attr", "metric", "mode", "max_t")),
    "median": (MedianStopping, ("time_attr", "metric", "mode")),
    "pbt": (PBT, ("time_attr", "metric", "mode", "hyperparam_mutations")),
    "pfl": (PredictedFinalLossScheduler, ("state_path",)),
}


def build_scheduler(name: str, kwargs: dict, *, metric: str, mode: str, epochs: int,
                    mutations: dict | None = None) -> TrialScheduler:
    """The scheduler `name` with the user's `kwargs` and tuneloop's defaults (the stateful ones
    keep their state in the sweep's local directory, `tuneloop.storage.driver_path`)."""
    if name == "fifo":
        return FIFOScheduler()
    if name == "pfl":
        return PredictedFinalLossScheduler(**kwargs, state_path="pfl_state.json")
    common = {"time_attr": TIME_ATTR, "metric": metric, "mode": mode}
    if name in ("asha", "hyperband"):
        common["max_t"] = epochs
    if name == "asha":
        common["state_path"] = "asha_state.pkl"
    if name == "pbt":
        kwargs = {"perturbation_interval": max(1, epochs // 5), **kwargs}
        common["hyperparam_mutations"] = mutations or {}
    return SCHEDULERS[name][0](**common, **kwargs)
