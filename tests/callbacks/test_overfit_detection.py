import math

import pytest
import torch

from tuneloop.callbacks import OverfitDetectionCallback, TrainingCallback
from tuneloop.trainer import Trainer


class Carrier:
    _overfit_gap_ratio = None


def run(callback, train, val, start=0, carrier=None):
    carrier, ratios = carrier or Carrier(), []
    for epoch, (t, v) in enumerate(zip(train, val), start=start):
        callback.on_epoch_end(carrier, epoch=epoch, train_loss=t, val_loss=v, metrics={})
        ratios.append(carrier._overfit_gap_ratio)
    return ratios


DOWN = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]
UP = [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7]


def test_fires_only_from_warmup_and_over_the_whole_window(capsys):
    ratios = run(OverfitDetectionCallback(warmup_epochs=5, window_size=3), DOWN, UP)
    assert ratios[:5] == [None] * 5  # epochs 0-4 are warmup even though divergence began at 1
    assert ratios[5:] == [pytest.approx(1.5 / 0.5), pytest.approx(1.6 / 0.4), pytest.approx(1.7 / 0.3)]
    out = capsys.readouterr().out
    assert out.count("overfitting") == 3 and "epoch 5" in out and "epoch 4" not in out
    assert "last 3 epoch" in out.splitlines()[0] and f"{1.5 / 0.5:.3g}" in out.splitlines()[0]


def test_defaults_are_warmup_5_and_window_5():
    callback = OverfitDetectionCallback()
    assert (callback.warmup_epochs, callback.window_size) == (5, 5)
    ratios = run(callback, DOWN, UP)
    assert ratios[:5] == [None] * 5 and ratios[5] == pytest.approx(1.5 / 0.5)  # epochs 0..5: 5 steps


def test_the_window_needs_window_size_steps_of_history():
    ratios = run(OverfitDetectionCallback(warmup_epochs=0, window_size=4), DOWN, UP)
    assert ratios[:4] == [None] * 4 and ratios[4] == pytest.approx(1.4 / 0.6)


def test_warmup_is_an_absolute_epoch_in_a_resumed_run():
    callback = OverfitDetectionCallback(warmup_epochs=12, window_size=2)
    ratios = run(callback, DOWN, UP, start=9)  # epochs 9..16, no earlier history
    assert ratios[:3] == [None] * 3  # epochs 9-11: before warmup
    assert ratios[3] == pytest.approx(1.3 / 0.7)  # epoch 12: 2 steps of history, past warmup


def test_window_needs_strict_monotonic_steps_and_is_not_sticky():
    train = [1.0, 0.9, 0.8, 0.7, 0.7, 0.6, 0.5, 0.4]
    val = [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7]
    ratios = run(OverfitDetectionCallback(warmup_epochs=0, window_size=3), train, val)
    assert ratios[3] == pytest.approx(1.3 / 0.7)
    assert ratios[4:7] == [None] * 3  # a flat train step inside the window breaks it (not sticky)
    assert ratios[7] == pytest.approx(1.7 / 0.4)  # once the flat step left the window it fires again


@pytest.mark.parametrize("train, val", [
    ([1.0, 0.9, 0.8, 0.7], [1.0, 1.1, 1.1, 1.2]),  # val flat for one step
    ([1.0, 0.9, 0.8, 0.7], [1.0, 1.1, 1.05, 1.2]),  # val dips
    ([1.0, 0.9, 0.95, 0.7], [1.0, 1.1, 1.2, 1.3]),  # train rises once
    ([1.0, 1.1, 1.2, 1.3], [1.0, 1.1, 1.2, 1.3]),  # both rising
    ([1.0, 0.9, 0.8, 0.7], [1.0, 0.9, 0.8, 0.7]),  # both falling: healthy training
    ([0.5] * 4, [0.7] * 4),  # flat
    ([1.0, 0.9, math.nan, 0.7], [1.0, 1.1, 1.2, 1.3]),  # NaN is never a strict step
])
def test_no_divergence_no_ratio(train, val):
    assert run(OverfitDetectionCallback(warmup_epochs=0, window_size=3), train, val) == [None] * 4


def test_window_size_one_is_hair_trigger(capsys):
    ratios = run(OverfitDetectionCallback(warmup_epochs=0, window_size=1), [1.0, 0.9, 0.95, 0.9, 0.89],
                 [1.0, 1.01, 1.0, 1.02, 1.02])
    assert ratios == [None, pytest.approx(1.01 / 0.9), None, pytest.approx(1.02 / 0.9), None]
    assert capsys.readouterr().out.count("overfitting") == 2


def test_flat_curves_never_fire():
    for window in (1, 2, 5):
        assert run(OverfitDetectionCallback(0, window), [0.5] * 8, [0.7] * 8) == [None] * 8


def test_a_stale_ratio_is_cleared_every_epoch():
    carrier = Carrier()
    carrier._overfit_gap_ratio = 9.9
    OverfitDetectionCallback(0, 1).on_epoch_end(carrier, epoch=0, train_loss=1.0, val_loss=1.0, metrics={})
    assert carrier._overfit_gap_ratio is None


@pytest.mark.parametrize("window_size", [0, -1])
def test_window_size_must_be_positive(window_size):
    with pytest.raises(ValueError, match="window_size"):
        OverfitDetectionCallback(window_size=window_size)


def test_state_dict_round_trip_uses_the_history():
    first = OverfitDetectionCallback(warmup_epochs=0, window_size=3)
    run(first, DOWN[:2], UP[:2])
    state = first.state_dict()
    assert state == {"train_losses": DOWN[:2], "val_losses": UP[:2]}
    resumed = OverfitDetectionCallback(warmup_epochs=0, window_size=3)
    resumed.load_state_dict(state)
    ratios = run(resumed, DOWN[2:6], UP[2:6], start=2)
    assert ratios == run(OverfitDetectionCallback(warmup_epochs=0, window_size=3), DOWN[:6], UP[:6])[2:]
    assert ratios[0] is None and ratios[1] == pytest.approx(1.3 / 0.7)
    fresh = OverfitDetectionCallback(warmup_epochs=0, window_size=3)
    assert run(fresh, DOWN[2:4], UP[2:4], start=2) == [None, None]  # without the state: no history


def test_in_a_trainer_the_consumer_sees_the_ratio():
    """A memorising model on random labels: train loss falls, val loss (other random labels) rises."""
    seen = []

    class Reader(TrainingCallback):
        priority = 80

        def on_epoch_end(self, trainer, *, epoch, train_loss, val_loss, **kwargs):
            seen.append((train_loss, val_loss, trainer._overfit_gap_ratio))

    torch.manual_seed(0)
    x_train, y_train = torch.randn(32, 20), torch.randint(0, 4, (32,))
    x_val, y_val = torch.randn(32, 20), torch.randint(0, 4, (32,))
    model = torch.nn.Sequential(torch.nn.Linear(20, 128), torch.nn.ReLU(), torch.nn.Linear(128, 4))
    trainer = Trainer(model, torch.optim.Adam(model.parameters(), lr=1e-2), None, torch.nn.CrossEntropyLoss(),
                      [Reader(), OverfitDetectionCallback(warmup_epochs=3, window_size=2)])
    trainer.train([(x_train, y_train)], [(x_val, y_val)], epochs=15)
    assert all(ratio is None for _, _, ratio in seen[:3])
    fired = [(t, v, r) for t, v, r in seen if r is not None]
    assert fired, "a memorising model overfits"
    for t, v, r in fired:
        assert r == pytest.approx(v / t)
    for epoch, (_, _, ratio) in enumerate(seen):
        window = seen[epoch - 2:epoch + 1] if epoch >= 2 else []
        diverging = epoch >= 3 and len(window) == 3 and all(
            b[0] < a[0] and b[1] > a[1] for a, b in zip(window, window[1:]))
        assert (ratio is not None) == diverging, epoch
