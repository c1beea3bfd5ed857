"""The synthetic learning-curve bench (tuneloop.synthetic): the family's fidelity knob, and
scheduler behaviour on it measured deterministically in seconds on a real local Ray (regret of
the configuration a sweep picks against the epochs it spent)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from tuneloop.tune.synthetic import best_final, observed_curve, run_synthetic_sweep, true_curve, true_final

EPOCHS = 20


def early_vs_final_rank_correlation(fidelity: float, epoch: int = 3) -> float:
    """Spearman correlation of the loss at `epoch` with the final loss over a grid of configurations."""
    grid = np.linspace(0.02, 0.98, 15)
    x1, x2 = (g.ravel() for g in np.meshgrid(grid, grid))
    curves = true_curve(x1, x2, EPOCHS, fidelity)
    return float(spearmanr(curves[:, epoch], curves[:, -1]).statistic)


def test_fidelity_sets_how_well_early_losses_rank_final_ones():
    """Spearman of the loss at epoch 3 with the final one: 1 at fidelity 1 (only the floor differs),
    falling as curves cross (measured: 0.56 at 0.75, 0.20 at 0.5, 0.19 at 0.25, 0.30 at 0)."""
    correlations = {f: early_vs_final_rank_correlation(f) for f in (1.0, 0.75, 0.5, 0.25, 0.0)}
    assert correlations[1.0] == pytest.approx(1.0, abs=1e-4)  # same shape everywhere: the ranking never changes
    assert correlations[1.0] > correlations[0.75] > correlations[0.5]
    assert max(correlations[0.5], correlations[0.25], correlations[0.0]) < 0.4  # early losses rank poorly
    assert early_vs_final_rank_correlation(0.5, epoch=10) > early_vs_final_rank_correlation(0.5, epoch=3)


def test_curves_decrease_to_their_floor_and_the_optimum_is_the_best_final():
    curves = true_curve(np.array([0.3, 0.9]), np.array([0.6, 0.1]), EPOCHS, 0.5)
    assert np.all(np.diff(curves, axis=-1) < 0)
    # at fidelity 1 the floor alone ranks configurations: the optimum has the best final; below 1
    # it learns slower, so within 20 epochs another configuration ends best
    assert true_final(0.3, 0.6, EPOCHS, 1.0) == pytest.approx(best_final(EPOCHS, 1.0), abs=1e-9)
    assert true_final(0.3, 0.6, EPOCHS, 0.5) > best_final(EPOCHS, 0.5) + 0.01
    with pytest.raises(ValueError, match=r"0 <= fidelity <= 1 must hold, but got fidelity=1.5"):
        true_curve(0.5, 0.5, EPOCHS, 1.5)


def test_observed_curves_are_deterministic_per_configuration_and_seed():
    first = observed_curve(0.25, 0.75, EPOCHS, 0.5, 0.05, seed=1)
    assert np.array_equal(first, observed_curve(0.25, 0.75, EPOCHS, 0.5, 0.05, seed=1))
    assert not np.array_equal(first, observed_curve(0.25, 0.75, EPOCHS, 0.5, 0.05, seed=2))
    noise = first / true_curve(0.25, 0.75, EPOCHS, 0.5) - 1.0
    assert 0 < float(np.abs(noise).max()) < 0.25


@pytest.mark.slow
def test_scheduler_behaviour_is_measured_deterministically(ray_local):
    """12 configurations x 20 epochs, one trial at a time: the same sweep twice spends the same
    epochs and picks the same configurations in the same order; ASHA and pfl spend well under
    fifo's epochs and pick a configuration as good as fifo's."""
    asha = {"grace_period": 2, "reduction_factor": 3}
    pfl = {"k": 2, "n_startup_trials": 3, "n_warmup_epochs": 4}  # a sweep's default predictor, calibrated
    common = dict(num_samples=12, epochs=EPOCHS, fidelity=0.5, noise=0.02, seed=0)
    fifo = run_synthetic_sweep("fifo", **common)
    runs = [run_synthetic_sweep("asha", asha, **common) for _ in range(2)]
    learned = run_synthetic_sweep("pfl", pfl, **common)

    assert (fifo.epochs_spent, fifo.completed) == (12 * EPOCHS, 12)
    assert (runs[0].epochs_spent, runs[0].trace) == (runs[1].epochs_spent, runs[1].trace)  # deterministic
    assert runs[0].best_true == runs[1].best_true
    for outcome in (runs[0], learned):
        assert outcome.epochs_spent <= 0.5 * fifo.epochs_spent
        assert 0 <= outcome.regret <= fifo.regret + 0.005
        assert outcome.completed < 12  # some trials were stopped early
    # regret against epochs spent: nothing before the first completed trial, then the picks' regret
    first_spent, first_regret = runs[0].trace[0]
    assert runs[0].regret_at(first_spent - 1) == math.inf and runs[0].regret_at(first_spent) == first_regret
    assert runs[0].regret_at(10**6) == runs[0].regret
    assert all(a[0] < b[0] for a, b in zip(runs[0].trace, runs[0].trace[1:]))


def test_a_checkpointing_synthetic_sweep_leaves_no_temporary_directories(ray_local):
    """HyperBand pauses trials, so the synthetic trials write a checkpoint per epoch through a
    scratch directory each: every one of them is gone once Tune copied it."""
    import tempfile
    import time
    from pathlib import Path

    def scratch_dirs() -> set[str]:
        return {p.name for p in Path(tempfile.gettempdir()).glob("tlsyn-*")}

    before = scratch_dirs()
    outcome = run_synthetic_sweep("hyperband", {"reduction_factor": 2}, num_samples=4, epochs=6, fidelity=0.5,
                                  noise=0.02, seed=0)
    assert outcome.epochs_spent > 0 and outcome.completed >= 1
    deadline = time.monotonic() + 30  # a stopped trial's thread may still be leaving its report
    while scratch_dirs() - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert scratch_dirs() - before == set()
