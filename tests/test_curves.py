"""The learning-curve predictors recover exact curves; the guard catches ill-behaved ones."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tuneloop.curves import (METHODS, fallback_loss, fit_exponential, fit_power_law, fit_shifted_exponential,
                             ill_behaved, plausible, predict_final)


@pytest.mark.parametrize("a, b, c", [(2.0, 0.3, 0.1), (0.8, 0.05, 0.4), (5.0, 1.2, 0.02), (1.0, 0.15, -0.3)])
@pytest.mark.parametrize("cut", [10, 20])
def test_shifted_exponential_recovers_an_exact_curve(a, b, c, cut):
    epochs = np.arange(cut)
    prediction = fit_shifted_exponential(epochs, a * np.exp(-b * epochs) + c, 39)
    assert prediction == pytest.approx(a * math.exp(-b * 39) + c, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("a, b, c", [(1.5, 0.7, 0.05), (3.0, 2.0, 0.2), (0.5, 0.1, 0.0), (1.0, 1.0, -0.5)])
@pytest.mark.parametrize("cut", [10, 20])
def test_power_law_recovers_an_exact_curve(a, b, c, cut):
    t = np.arange(cut) + 1.0  # t = epoch + 1
    prediction = fit_power_law(np.arange(cut), a * t ** (-b) + c, 39)
    assert prediction == pytest.approx(a * 40.0 ** (-b) + c, rel=1e-6, abs=1e-9)


def test_each_fit_is_the_right_one_for_its_family():
    """On a power law the power-law fit is exact and the others are not (and vice versa)."""
    epochs = np.arange(12)
    power = 2.0 * (epochs + 1.0) ** -0.8 + 0.1
    truth = 2.0 * 40.0 ** -0.8 + 0.1
    assert abs(fit_power_law(epochs, power, 39) - truth) < 1e-6
    assert abs(fit_shifted_exponential(epochs, power, 39) - truth) > 1e-2
    assert abs(fit_exponential(epochs, power, 39) - truth) > 1e-2


def test_the_exponential_is_the_seed_fit_and_importable_from_the_callback():
    from tuneloop.callbacks.loss_prediction import fit_exponential as from_callback

    assert from_callback is fit_exponential
    epochs = np.arange(10)
    assert fit_exponential(epochs, 3.0 * np.exp(-0.2 * epochs), 39) == pytest.approx(3.0 * math.exp(-0.2 * 39))


def test_noisy_curves_give_close_predictions():
    rng = np.random.default_rng(0)
    epochs = np.arange(20)
    curve = 1.5 * (epochs + 1.0) ** -0.9 + 0.2
    noisy = curve * (1 + 0.01 * rng.standard_normal(len(curve)))
    truth = 1.5 * 40.0 ** -0.9 + 0.2
    assert predict_final(epochs, noisy, 39, "power_law") == pytest.approx(truth, rel=0.05)


@pytest.mark.parametrize("method", ["shifted_exponential", "power_law"])
def test_fits_refuse_too_little_or_non_finite_data(method):
    with pytest.raises(ValueError, match="three"):
        predict_final([0, 1], [1.0, 0.5], 39, method, guard=False)
    with pytest.raises(ValueError, match="finite"):
        predict_final(range(5), [1.0, 0.8, math.nan, 0.6, 0.5], 39, method, guard=False)


def test_unknown_method_names_the_choices():
    with pytest.raises(ValueError, match="method must be one of exponential, .*but got 'cubic'"):
        predict_final(range(5), [1, 0.8, 0.7, 0.6, 0.55], 39, "cubic")


@pytest.mark.parametrize("losses, reason", [
    ([1.0, 0.5, 0.4], "fewer than"),
    ([1.0, 0.8, math.inf, 0.6, 0.5], "non-finite"),
    ([0.5] * 8, "flat"),
    ([1.0, 0.2, 0.9, 0.1, 1.0, 0.15, 0.95, 0.2, 1.0, 0.1], "noisy"),
    ([1.0, 0.7, 0.5, 0.4, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8], "rising"),
])
def test_the_guard_names_ill_behaved_curves(losses, reason):
    assert reason in ill_behaved(losses)
    for method in METHODS:  # every guarded predictor falls back to the mean of the last three
        assert predict_final(range(len(losses)), losses, 39, method) == pytest.approx(fallback_loss(losses),
                                                                                     nan_ok=True)


def test_a_well_behaved_curve_passes_the_guard():
    losses = list(1.0 + np.exp(-0.3 * np.arange(12)))
    assert ill_behaved(losses) is None
    assert predict_final(range(12), losses, 39, "shifted_exponential") == pytest.approx(1.0 + math.exp(-0.3 * 39))


def test_the_guard_rejects_an_absurd_extrapolation():
    """A linear-looking drop: the exponential fit of its first points extrapolates below zero for
    the shifted fits (a straight line) — implausible for positive losses."""
    losses = [1.0 - 0.05 * e for e in range(12)]  # 1.0 … 0.45, straight
    raw = predict_final(range(12), losses, 99, "shifted_exponential", guard=False)
    assert raw < 0
    assert not plausible(raw, losses)
    assert predict_final(range(12), losses, 99, "shifted_exponential") == pytest.approx(np.mean(losses[-3:]))


def test_an_early_steep_curve_may_fall_far_below_its_observed_range():
    """Five epochs of a shifted exponential (2.10 … 1.51) whose epoch-39 value (0.336) lies far
    below the observed minimum minus the observed range: the exact fit is kept, not replaced by
    the last losses (which would make pfl stop every trial at its warmup)."""
    losses = [0.3 + 1.8 * math.exp(-0.1 * e) for e in range(5)]
    truth = 0.3 + 1.8 * math.exp(-0.1 * 39)
    assert truth < min(losses) - (max(losses) - min(losses))
    assert plausible(truth, losses) and not plausible(-0.01, losses) and not plausible(2.8, losses)
    assert predict_final(range(5), losses, 39, "shifted_exponential") == pytest.approx(truth, rel=1e-6)


def test_fallback_skips_non_finite_values():
    assert fallback_loss([1.0, 2.0, math.nan, 3.0, 4.0]) == pytest.approx(3.0)
    assert math.isnan(fallback_loss([math.nan]))
