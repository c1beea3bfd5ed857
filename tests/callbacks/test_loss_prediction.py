import math

import numpy as np
import pytest
import torch

from tuneloop.callbacks import LossPredictionCallback, TrainingCallback
from tuneloop.trainer import Trainer


class Carrier:
    _loss_prediction = None


def feed(callback, losses, trainer=None, start=0):
    trainer = trainer or Carrier()
    predictions = []
    for epoch, loss in enumerate(losses, start=start):
        callback.on_val_end(trainer, epoch=epoch, val_loss=loss, metrics={})
        predictions.append(trainer._loss_prediction)
    return predictions


@pytest.mark.parametrize("a, k, max_epochs", [(2.0, -0.15, 40), (0.3, -0.02, 100), (5.0, 0.01, 20), (1.0, 0.0, 30)])
def test_none_for_ten_epochs_then_the_exact_exponential_extrapolation(a, k, max_epochs):
    """The seed: None for the first 10 epochs; the first prediction at epoch index 10."""
    losses = [a * math.exp(k * t) for t in range(14)]
    predictions = feed(LossPredictionCallback(max_epochs), losses)
    assert predictions[:10] == [None] * 10
    expected = -math.log10(a * math.exp(k * (max_epochs - 1)))
    for prediction in predictions[10:]:  # from epoch index 10 (the 11th epoch) on, every epoch
        assert isinstance(prediction, float) and prediction == pytest.approx(expected, abs=1e-6)


def test_absolute_epochs_are_the_time_axis():
    """A resumed run continues the numbering: the fit uses the absolute epochs."""
    a, k, max_epochs = 3.0, -0.1, 60
    callback = LossPredictionCallback(max_epochs)
    predictions = feed(callback, [a * math.exp(k * t) for t in range(20, 32)], start=20)
    assert predictions[:10] == [None] * 10
    assert predictions[10] == pytest.approx(-math.log10(a * math.exp(k * (max_epochs - 1))), abs=1e-6)


def test_a_noisy_curve_gives_the_log_linear_least_squares_fit():
    rng = np.random.default_rng(0)
    t = np.arange(15)
    losses = list(1.5 * np.exp(-0.2 * t) * np.exp(rng.normal(0, 0.1, len(t))))
    prediction = feed(LossPredictionCallback(50), losses)[-1]
    k, log_a = np.polyfit(t, np.log(losses), 1)
    assert prediction == pytest.approx(-(log_a + k * 49) / math.log(10), abs=1e-9)


def fitted(losses, at_epoch):
    k, log_a = np.polyfit(np.arange(len(losses)), np.log(losses), 1)
    return -(log_a + k * at_epoch) / math.log(10)


@pytest.mark.parametrize("bad", [0.0, -0.5, math.nan, math.inf])
@pytest.mark.parametrize("position", [0, 4, 11])
def test_a_bad_loss_anywhere_in_the_history_falls_back_to_the_last_loss(bad, position):
    losses = [1.0 / (t + 1) for t in range(13)]
    losses[position] = bad
    predictions = feed(LossPredictionCallback(30), losses)
    assert predictions[9] is None  # the 10th epoch: no prediction yet, whatever the history
    for epoch in (10, 11, 12):
        if epoch >= position:  # the bad value is in the history, and stays there
            if epoch == position:
                assert predictions[epoch] is None  # the last loss is the bad one: nothing defined
            else:
                assert predictions[epoch] == pytest.approx(-math.log10(losses[epoch]))
        else:  # a clean history: the fit
            assert predictions[epoch] == pytest.approx(fitted(losses[:epoch + 1], 29), abs=1e-9)


@pytest.mark.parametrize("last", [0.0, -1.0, math.nan, math.inf, -math.inf])
def test_no_prediction_when_the_last_loss_is_undefined(last):
    losses = [1.0] * 10 + [last]
    assert feed(LossPredictionCallback(30), losses)[10] is None


def test_overflowing_fit_falls_back():
    losses = [math.exp(60 * t) for t in range(11)]  # grows so fast the extrapolation overflows
    prediction = feed(LossPredictionCallback(10_000), losses)[10]
    assert prediction == pytest.approx(-math.log10(losses[-1]))


def test_underflowing_fit_falls_back():
    losses = [math.exp(-60 * t) for t in range(11)]  # the extrapolation underflows to 0
    prediction = feed(LossPredictionCallback(10_000), losses)[10]
    assert prediction == pytest.approx(-math.log10(losses[-1]))


def test_state_dict_round_trip():
    losses = list(np.linspace(2.0, 0.5, 14))
    first = LossPredictionCallback(50)
    feed(first, losses[:7])
    state = first.state_dict()
    assert state == {"epochs": list(range(7)), "losses": pytest.approx(losses[:7])}
    resumed = LossPredictionCallback(50)
    resumed.load_state_dict(state)
    resumed_predictions = feed(resumed, losses[7:], start=7)
    assert resumed_predictions == feed(LossPredictionCallback(50), losses)[7:]
    assert resumed_predictions[:3] == [None] * 3 and resumed_predictions[3] is not None
    first.epochs.append(99)  # the state is a copy, not the live lists
    assert state["epochs"] == list(range(7))


def test_state_dict_survives_torch_save_with_weights_only(tmp_path):
    callback = LossPredictionCallback(20)
    feed(callback, [2.0 * 0.9 ** t for t in range(11)])
    torch.save(callback.state_dict(), tmp_path / "s.pt")
    resumed = LossPredictionCallback(20)
    resumed.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert resumed.predict() == callback.predict() is not None


def test_the_trainer_carries_the_prediction():
    seen = []

    class Reader(TrainingCallback):
        priority = 80  # a consumer after the producer (70)

        def on_val_end(self, trainer, **kwargs):
            seen.append(trainer._loss_prediction)

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), None, torch.nn.CrossEntropyLoss(),
                      [Reader(), LossPredictionCallback(max_epochs=12)])
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    trainer.train([(x, y)], [(x, y)], epochs=12)
    assert seen[:10] == [None] * 10 and all(isinstance(v, float) and math.isfinite(v) for v in seen[10:])
    assert trainer._loss_prediction == seen[-1]
    assert trainer.epoch_record(11, 1.0, 1.0, {})["predicted_final_loss"] == pytest.approx(10 ** -seen[-1])
