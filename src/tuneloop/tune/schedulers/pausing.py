"""`hyperband`, `median` and `pbt`: Ray's schedulers that pause trials (or swap in another trial's
checkpoint), with one rule added: a trial that has finished is never paused."""

from __future__ import annotations

from ray.tune.schedulers import HyperBandScheduler, MedianStoppingRule, PopulationBasedTraining, TrialScheduler


class StopFinished:
    """A trial's own last result (`trial_done`: its last epoch, or its own early stop) is answered
    STOP, never PAUSE. The trial's function has returned by then: a paused trial could never be
    resumed, and Tune would wait for it forever (seen with HyperBand at max_t)."""

    def on_trial_result(self, tune_controller, trial, result):
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.PAUSE and result.get("trial_done"):
            return TrialScheduler.STOP
        return decision


class HyperBand(StopFinished, HyperBandScheduler):
    """Ray's HyperBand; a finished trial is never paused."""


class MedianStopping(StopFinished, MedianStoppingRule):
    """Ray's median stopping rule; a finished trial is never paused."""


class PBT(StopFinished, PopulationBasedTraining):
    """Ray's population based training; a finished trial is never paused."""
