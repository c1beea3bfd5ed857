"""The `pfl` scheduler's decisions and its state across a restore, driven directly."""

from __future__ import annotations

import math
import pickle
from types import SimpleNamespace

from ray.tune.schedulers import TrialScheduler

from tuneloop.schedulers import PredictedFinalLossScheduler


def trial(trial_id: str):
    return SimpleNamespace(trial_id=trial_id)


def complete(scheduler, trial_id, final, done=True):
    scheduler.on_trial_complete(None, trial(trial_id), {"val_loss": final, "trial_done": done})


def decide(scheduler, trial_id, iteration, predicted):
    return scheduler.on_trial_result(None, trial(trial_id), {"training_iteration": iteration,
                                                             "predicted_final_loss": predicted})


def test_stops_only_after_startup_and_warmup():
    pfl = PredictedFinalLossScheduler(k=1, n_startup_trials=2, n_warmup_epochs=3)
    complete(pfl, "a", 0.5)
    assert decide(pfl, "x", 5, 10.0) == TrialScheduler.CONTINUE  # 1 of 2 startup trials
    complete(pfl, "b", 0.3)
    assert decide(pfl, "x", 2, 10.0) == TrialScheduler.CONTINUE  # warmup: 2 < 3 epochs
    assert decide(pfl, "x", 3, 0.29) == TrialScheduler.CONTINUE  # better than the best final
    assert decide(pfl, "x", 3, 0.31) == TrialScheduler.STOP


def test_kth_best_threshold():
    pfl = PredictedFinalLossScheduler(k=2, n_startup_trials=3, n_warmup_epochs=0)
    for name, final in [("a", 0.1), ("b", 0.4), ("c", 0.2)]:
        complete(pfl, name, final)
    assert pfl.threshold() == 0.2
    assert decide(pfl, "x", 1, 0.19) == TrialScheduler.CONTINUE
    assert decide(pfl, "x", 1, 0.21) == TrialScheduler.STOP


def test_nan_safe():
    pfl = PredictedFinalLossScheduler(k=1, n_startup_trials=1, n_warmup_epochs=0)
    complete(pfl, "nan", math.nan)  # a NaN final is never counted
    complete(pfl, "inf", math.inf)
    assert pfl.threshold() is None
    complete(pfl, "ok", 0.5)
    assert pfl.threshold() == 0.5
    assert decide(pfl, "x", 1, math.nan) == TrialScheduler.CONTINUE
    assert decide(pfl, "x", 1, None) == TrialScheduler.CONTINUE
    assert decide(pfl, "x", 1, 0.6) == TrialScheduler.STOP  # still working after the NaN trial


def test_pruned_trials_do_not_count_as_finals():
    pfl = PredictedFinalLossScheduler(k=1, n_startup_trials=1, n_warmup_epochs=0)
    complete(pfl, "pruned", 0.01, done=False)
    assert pfl.threshold() is None


def test_state_survives_pickling_and_a_new_instance(tmp_path):
    path = str(tmp_path / "pfl_state.json")
    pfl = PredictedFinalLossScheduler(k=1, n_startup_trials=1, n_warmup_epochs=0, state_path=path)
    blob = pickle.dumps(pfl)  # what Tune stores in tuner.pkl at the start
    complete(pfl, "a", 0.25)
    restored = pickle.loads(blob)  # Tuner.restore unpickles the early copy ...
    assert restored.finals == {"a": 0.25}  # ... which reads the state written since
    fresh = PredictedFinalLossScheduler(k=1, n_startup_trials=1, n_warmup_epochs=0, state_path=path)
    assert fresh.threshold() == 0.25
