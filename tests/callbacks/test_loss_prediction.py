import math

import numpy as np
import pytest

from tuneloop.callbacks import LossPredictionCallback


class Carrier:
    _loss_prediction = None


def feed(callback, losses, trainer=None):
    trainer = trainer or Carrier()
    predictions = []
    for epoch, loss in enumerate(losses):
        callback.on_val_end(trainer, epoch=epoch, val_loss=loss, metrics={})
        predictions.append(trainer._loss_prediction)
    return predictions


def test_none_before_the_tenth_epoch_then_the_exponential_extrapolation():
    a, k, max_epochs = 2.0, -0.15, 40
    losses = [a * math.exp(k * t) for t in range(12)]
    predictions = feed(LossPredictionCallback(max_epochs), losses)
    assert predictions[:9] == [None] * 9
    expected = -math.log10(a * math.exp(k * (max_epochs - 1)))
    assert predictions[9] == pytest.approx(expected, abs=1e-6)
    assert predictions[11] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("bad", [0.0, -0.5, math.nan, math.inf])
def test_non_positive_or_non_finite_history_falls_back_to_the_last_loss(bad):
    losses = [1.0 / (t + 1) for t in range(10)]
    losses[4] = bad
    predictions = feed(LossPredictionCallback(30), losses)
    assert predictions[9] == pytest.approx(-math.log10(losses[-1]))


@pytest.mark.parametrize("last", [0.0, -1.0, math.nan])
def test_no_prediction_when_the_last_loss_is_undefined(last):
    losses = [1.0] * 9 + [last]
    assert feed(LossPredictionCallback(30), losses)[9] is None


def test_overflowing_fit_falls_back():
    losses = [math.exp(60 * t) for t in range(10)]  # grows so fast the extrapolation overflows
    prediction = feed(LossPredictionCallback(10_000), losses)[9]
    assert prediction == pytest.approx(-math.log10(losses[-1]))


def test_state_dict_round_trip():
    losses = list(np.linspace(2.0, 0.5, 14))
    first = LossPredictionCallback(50)
    feed(first, losses[:7])
    resumed = LossPredictionCallback(50)
    resumed.load_state_dict(first.state_dict())
    carrier = Carrier()
    for epoch, loss in enumerate(losses[7:], start=7):
        resumed.on_val_end(carrier, epoch=epoch, val_loss=loss, metrics={})
    assert carrier._loss_prediction == feed(LossPredictionCallback(50), losses)[-1]
