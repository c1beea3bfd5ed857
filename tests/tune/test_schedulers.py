"""The `pfl` scheduler's decisions and its state across a restore, driven directly."""

from __future__ import annotations

import math
import pickle
from types import SimpleNamespace

import pytest

from ray.tune.schedulers import TrialScheduler

from tuneloop.tune.schedulers import PredictedFinalLossScheduler


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


def result(iteration, val_loss, **extra):
    return {"training_iteration": iteration, "epoch": iteration - 1, "val_loss": val_loss, **extra}


def feed_curve(scheduler, trial_id, losses):
    """Report `losses` epoch by epoch; the decisions."""
    return [scheduler.on_trial_result(None, trial(trial_id), result(i + 1, v)) for i, v in enumerate(losses)]


def test_own_predictor_fits_the_history_and_ignores_the_reported_prediction():
    pfl = PredictedFinalLossScheduler(k=1, n_startup_trials=1, n_warmup_epochs=5, predictor="power_law", max_t=40)
    complete(pfl, "a", 0.30)
    good = [0.2 + 2.0 * (e + 1.0) ** -1.0 for e in range(8)]  # → 0.25 at epoch 39: better than 0.30
    bad = [0.4 + 2.0 * (e + 1.0) ** -1.0 for e in range(8)]  # → 0.45
    decisions = [pfl.on_trial_result(None, trial("g"), result(i + 1, v, predicted_final_loss=99.0))
                 for i, v in enumerate(good)]
    assert decisions == [TrialScheduler.CONTINUE] * 8  # the reported 99 is not used
    assert pfl.predict("g", {}) == pytest.approx(0.2 + 2.0 / 40, rel=1e-6)
    decisions = feed_curve(pfl, "b", bad)
    assert decisions[:4] == [TrialScheduler.CONTINUE] * 4 and decisions[4] == TrialScheduler.STOP  # at warmup
    assert "b" in pfl.stopped and "b" not in pfl.history


def test_reported_predictor_is_the_default_behaviour_of_the_seed():
    pfl = PredictedFinalLossScheduler(k=1, n_startup_trials=1, n_warmup_epochs=0, predictor="reported")
    complete(pfl, "a", 0.3)
    assert pfl.on_trial_result(None, trial("x"), result(3, 9.0, predicted_final_loss=0.2)) == TrialScheduler.CONTINUE
    assert pfl.history == {}  # nothing kept driver-side


def test_the_last_epoch_is_never_stopped_and_counts_as_a_final():
    pfl = PredictedFinalLossScheduler(k=1, n_startup_trials=1, n_warmup_epochs=0)
    complete(pfl, "a", 0.3)
    last = {"training_iteration": 40, "predicted_final_loss": 0.5, "val_loss": 0.5, "trial_done": True}
    assert pfl.on_trial_result(None, trial("x"), last) == TrialScheduler.CONTINUE


def test_guard_keeps_an_absurd_extrapolation_from_saving_a_bad_trial():
    """A straight drop: the shifted-exponential fit extrapolates it linearly, below zero at epoch 99.
    Unguarded, that beats every final and the trial is never stopped; guarded, the prediction is
    the mean of the last three losses (≥ 0.55), worse than the final 0.1: stopped."""
    line = [1.0 - 0.05 * e for e in range(11)]
    decisions = {}
    for guard in (True, False):
        pfl = PredictedFinalLossScheduler(k=1, n_startup_trials=1, n_warmup_epochs=10,
                                          predictor="shifted_exponential", max_t=100, guard=guard)
        complete(pfl, "a", 0.1)
        decisions[guard] = feed_curve(pfl, "x", line)
    assert decisions[False] == [TrialScheduler.CONTINUE] * 11
    assert decisions[True] == [TrialScheduler.CONTINUE] * 9 + [TrialScheduler.STOP] + [TrialScheduler.STOP]


def test_history_survives_a_restore(tmp_path):
    path = str(tmp_path / "pfl_state.json")
    kwargs = dict(k=1, n_startup_trials=1, n_warmup_epochs=0, predictor="power_law", max_t=40, state_path=path)
    pfl = PredictedFinalLossScheduler(**kwargs)
    blob = pickle.dumps(pfl)
    feed_curve(pfl, "x", [1.0, 0.7, 0.6, 0.55])
    pfl.on_trial_result(None, trial("x"), result(4, 0.5))  # a re-run epoch overwrites, never duplicates
    restored = pickle.loads(blob)
    assert restored.history == {"x": {0: 1.0, 1: 0.7, 2: 0.6, 3: 0.5}}
    assert PredictedFinalLossScheduler(**kwargs).history == restored.history
    complete(restored, "x", 0.45)  # a finished trial's history is dropped, its final kept
    assert PredictedFinalLossScheduler(**kwargs).history == {} and restored.finals == {"x": 0.45}


@pytest.mark.parametrize("kwargs, message", [
    ({"predictor": "cubic"}, "predictor must be one of reported, .*but got 'cubic'"),
    ({"predictor": "power_law"}, "max_t >= 1 must hold for predictor 'power_law', but got max_t=None"),
    ({"k": 0}, "k >= 1 must hold, but got k=0"),
])
def test_bad_arguments_state_the_rule_and_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PredictedFinalLossScheduler(**kwargs)


def test_build_scheduler_gives_pfl_the_epochs(tmp_path):
    from tuneloop.tune.schedulers import build_scheduler
    pfl = build_scheduler("pfl", {"predictor": "shifted_exponential"}, metric="val_loss", mode="min", epochs=25)
    assert pfl.max_t == 25 and pfl.predictor == "shifted_exponential"
    default = build_scheduler("pfl", {}, metric="val_loss", mode="min", epochs=25)
    # a sweep's default: the most accurate predictor of benchmarks/prediction_quality.py, calibrated
    assert (default.predictor, default.calibrate) == ("shifted_exponential", True)


def test_asha_remembers_the_trials_it_pruned_not_those_that_ended_at_max_t(tmp_path):
    """After a restore, a trial ASHA pruned is stopped again at its first result; a trial whose own
    last epoch ASHA answered STOP (at max_t) was not pruned, and a resume that retrains it (Tune's
    snapshot predating its end) lets it finish."""
    from tuneloop.tune.schedulers import PersistentASHA

    asha = PersistentASHA(metric="val_loss", mode="min", max_t=4, grace_period=1, reduction_factor=2,
                          state_path=str(tmp_path / "asha_state.pkl"))
    finished, pruned = trial("finished"), trial("pruned")
    for t in (finished, pruned):
        asha.on_trial_add(None, t)
    decisions = [asha.on_trial_result(None, finished, result(i, 1.0 / i, trial_done=i == 4)) for i in (1, 2, 3, 4)]
    assert decisions[-1] == TrialScheduler.STOP  # ASHA stops every trial at max_t
    assert asha.on_trial_result(None, pruned, result(1, 5.0)) == TrialScheduler.STOP  # worse than the rung
    restored = pickle.loads(pickle.dumps(asha))  # the state file is read back (an absolute path)
    assert restored.stopped == {"pruned"}
    assert restored.on_trial_result(None, trial("pruned"), result(2, 0.1)) == TrialScheduler.STOP
    assert restored.on_trial_result(None, trial("finished"), result(3, 0.1)) == TrialScheduler.CONTINUE
