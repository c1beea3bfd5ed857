"""`pfl`: stop a trial once its predicted final loss is worse than the k-th best final val_loss of
the trials that completed (tuneloop's learning-curve scheduler)."""

from __future__ import annotations

import json
import statistics

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from tuneloop._io import atomic_write_text
from tuneloop.outcome import finite as _finite
from tuneloop.tune.schedulers.base import TIME_ATTR, PersistentState

PREDICTORS = ("reported", "exponential", "shifted_exponential", "power_law", "last")
DEFAULT_PREDICTOR = "reported"  # the class's default: the trial's own report, needs no max_t
# A sweep's pfl default: the predictor with the smallest error on real learning curves in
# benchmarks/prediction_quality.py (median relative error of the epoch-39 loss from epochs 10/20/30,
# guarded; digits and diabetes, trained and from sweeps): shifted exponential 0.11, last losses 0.13,
# power law 0.15, the seed's A·exp(K·t) 0.29 (the synthetic curves, power laws by construction,
# favour the power law). Calibrated (see the class): on the synthetic bench that brought pfl from
# 1.16 to 1.04 × fifo's best (seeds 3-5, fidelity 0.9).
SWEEP_PREDICTOR = "shifted_exponential"


class PredictedFinalLossScheduler(PersistentState, FIFOScheduler):
    """Stop a trial whose predicted final loss is worse than the k-th best completed final val_loss.

    The prediction is the trial's reported `predicted_final_loss` (`predictor="reported"`: the
    LossPredictionCallback's `A·exp(K·t)` fit), or the scheduler's own fit of the trial's val_loss
    history to epoch `max_t - 1` (`exponential`, `shifted_exponential`, `power_law`, or `last`: see
    `tuneloop.curves`; with `guard`, an ill-behaved curve or an absurd fit gives the mean of the last
    three losses). With `calibrate`, the prediction at epoch e is corrected by the completed trials:
    multiplied by the median over them of (final / their own prediction at epoch e) (an offset when
    a value is not positive), which removes a predictor's systematic bias at that epoch (e.g. `last`
    always predicts too high early on). Acts only once `n_startup_trials` trials completed and the
    trial has trained `n_warmup_epochs` epochs. NaN-safe: non-finite finals are never counted and
    non-finite predictions never stop a trial. With `state_path` (absolute, or a name in the sweep's
    local directory) its state (finals, stopped trials, the histories and predictions it keeps) is
    written after each change and read back by `bind` (an absolute path: also when created), so it
    survives `Tuner.restore`.
    """

    def __init__(self, k: int = 3, n_startup_trials: int = 5, n_warmup_epochs: int = 10,
                 prediction: str = "predicted_final_loss", final: str = "val_loss",
                 predictor: str = DEFAULT_PREDICTOR, guard: bool = True, calibrate: bool = False,
                 max_t: int | None = None, state_path: str | None = None):
        super().__init__()
        if k < 1:
            raise ValueError(f"k >= 1 must hold, but got k={k}")
        if predictor not in PREDICTORS:
            raise ValueError(f"predictor must be one of {', '.join(PREDICTORS)}, but got {predictor!r}")
        if predictor != "reported" and (max_t is None or max_t < 1):
            raise ValueError(f"max_t >= 1 must hold for predictor {predictor!r}, but got max_t={max_t}")
        self.k, self.n_startup_trials, self.n_warmup_epochs = k, n_startup_trials, n_warmup_epochs
        self.prediction, self.final = prediction, final
        self.predictor, self.guard, self.calibrate, self.max_t = predictor, guard, calibrate, max_t
        self.state_path = state_path
        self.finals: dict[str, float] = {}  # trial id → final val_loss of completed trials
        self.stopped: list[str] = []
        self.history: dict[str, dict[int, float]] = {}  # running trial id → {epoch: val_loss} (own predictors)
        self.raw: dict[str, dict[int, float]] = {}  # trial id → {epoch: uncalibrated prediction} (calibrate)
        self._load_unbound()

    def threshold(self) -> float | None:
        """The k-th best final loss, or None while fewer than max(k, n_startup_trials) completed."""
        finals = sorted(self.finals.values())
        if len(finals) < max(self.k, self.n_startup_trials):
            return None
        return finals[self.k - 1]

    def predict(self, trial_id: str, result: dict) -> float | None:
        """The trial's predicted final loss: reported, or fitted to its history here."""
        if self.predictor == "reported":
            return result.get(self.prediction)
        from tuneloop.curves import predict_final

        history = self.history.get(trial_id, {})
        epochs = sorted(history)
        try:
            return predict_final(epochs, [history[e] for e in epochs], self.max_t - 1, self.predictor,
                                 guard=self.guard)
        except ValueError:  # an unguarded fit that failed: no prediction, no stop
            return None

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        """Record the epoch's loss; STOP once the predicted final loss is worse than the threshold.
        The state is written once per result that changed it."""
        if trial.trial_id in self.stopped:  # stopped before a driver crash, resumed by the restore
            return TrialScheduler.STOP
        recorded = self.predictor != "reported" and self._record(trial.trial_id, result)
        decision, changed = self._decide(trial.trial_id, result)
        if recorded or changed:
            self._save()
        return decision

    def _decide(self, trial_id: str, result: dict) -> tuple[str, bool]:
        """(the decision on this result, whether the state changed beyond the recorded loss)."""
        if result.get(TIME_ATTR, 0) < self.n_warmup_epochs or result.get("trial_done"):
            return TrialScheduler.CONTINUE, False  # its own last epoch: the final itself, nothing to predict
        threshold = self.threshold()
        if threshold is None and not self.calibrate:
            return TrialScheduler.CONTINUE, False
        predicted = self.predict(trial_id, result)
        if not _finite(predicted):
            return TrialScheduler.CONTINUE, False
        if self.calibrate:  # the completed trials' predictions at this epoch calibrate later ones
            epoch = _epoch(result)
            self.raw.setdefault(trial_id, {})[epoch] = float(predicted)
            predicted = self.calibrated(float(predicted), epoch)
        if threshold is not None and predicted > threshold:
            self.stopped.append(trial_id)
            self.history.pop(trial_id, None)
            self.raw.pop(trial_id, None)
            return TrialScheduler.STOP, True
        return TrialScheduler.CONTINUE, self.calibrate

    def calibrated(self, predicted: float, epoch: int) -> float:
        """`predicted` corrected by the completed trials' final / prediction at `epoch` (median)."""
        pairs = [(final, self.raw[t][epoch]) for t, final in self.finals.items() if epoch in self.raw.get(t, {})]
        if not pairs:
            return predicted
        if predicted > 0 and all(f > 0 and p > 0 for f, p in pairs):
            return predicted * statistics.median(f / p for f, p in pairs)
        return predicted + statistics.median(f - p for f, p in pairs)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        """Count the final val_loss of a trial that reached its own end."""
        value = (result or {}).get(self.final)
        dropped = self.history.pop(trial.trial_id, None) is not None
        if (result or {}).get("trial_done") and _finite(value):
            self.finals[trial.trial_id] = float(value)  # its predictions (raw) stay: they calibrate
            self._save()
        elif dropped or self.raw.pop(trial.trial_id, None) is not None:
            self._save()

    def debug_string(self) -> str:
        return (f"Using PredictedFinalLoss ({self.predictor}): {len(self.finals)} finals, threshold "
                f"{self.threshold()}, {len(self.stopped)} stopped")

    def _record(self, trial_id: str, result: dict) -> bool:
        """Keep the result's loss in the trial's history (a re-run epoch overwrites); whether it had one."""
        value = result.get(self.final)
        if not isinstance(value, (int, float)):
            return False
        self.history.setdefault(trial_id, {})[_epoch(result)] = float(value)
        return True

    def _save(self) -> None:
        if self.state_path:
            history, raw = ({t: {str(e): v for e, v in h.items()} for t, h in kept.items()}
                            for kept in (self.history, self.raw))
            atomic_write_text(self._state_file(), json.dumps(
                {"finals": self.finals, "stopped": self.stopped, "history": history, "raw": raw}))

    def _load(self) -> None:
        path = self._state_file()
        if path is not None and path.exists():
            state = json.loads(path.read_text())
            self.finals, self.stopped = state["finals"], state["stopped"]
            self.history, self.raw = ({t: {int(e): float(v) for e, v in h.items()}
                                       for t, h in state.get(name, {}).items()} for name in ("history", "raw"))

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("history", {})
        self.__dict__.setdefault("predictor", "reported")
        self.__dict__.setdefault("guard", True)
        self.__dict__.setdefault("max_t", None)
        self.__dict__.setdefault("calibrate", False)
        self.__dict__.setdefault("raw", {})
        self._load_unbound()  # a name in the sweep's directory: read back by bind


def _epoch(result: dict) -> int:
    """The result's 0-based epoch (`epoch`, else `training_iteration - 1`)."""
    epoch = result.get("epoch")
    return int(epoch) if isinstance(epoch, (int, float)) else int(result.get(TIME_ATTR, 1)) - 1
