import pytest

from tuneloop.callbacks import OverfitDetectionCallback


class Carrier:
    _overfit_gap_ratio = None


def run(callback, train, val, capsys=None):
    carrier, ratios = Carrier(), []
    for epoch, (t, v) in enumerate(zip(train, val)):
        callback.on_epoch_end(carrier, epoch=epoch, train_loss=t, val_loss=v, metrics={})
        ratios.append(carrier._overfit_gap_ratio)
    return ratios


def test_fires_only_from_warmup_and_over_the_whole_window(capsys):
    train = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]
    val = [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7]
    ratios = run(OverfitDetectionCallback(warmup_epochs=5, window_size=3), train, val)
    assert ratios[:5] == [None] * 5  # epochs 0-4 are warmup even though divergence began at 1
    assert ratios[5] == pytest.approx(1.5 / 0.5) and ratios[7] == pytest.approx(1.7 / 0.3)
    assert capsys.readouterr().out.count("overfitting") == 3


def test_window_needs_strict_monotonic_steps_and_is_not_sticky():
    train = [1.0, 0.9, 0.8, 0.7, 0.7, 0.6]
    val = [1.0, 1.1, 1.2, 1.3, 1.4, 1.5]
    ratios = run(OverfitDetectionCallback(warmup_epochs=0, window_size=3), train, val)
    assert ratios[3] is not None
    assert ratios[4] is None and ratios[5] is None  # a flat train step breaks the window


def test_window_size_one_is_hair_trigger():
    ratios = run(OverfitDetectionCallback(warmup_epochs=0, window_size=1), [1.0, 0.9, 0.95, 0.9],
                 [1.0, 1.01, 1.0, 1.02])
    assert ratios == [None, pytest.approx(1.01 / 0.9), None, pytest.approx(1.02 / 0.9)]


def test_flat_curves_never_fire():
    assert run(OverfitDetectionCallback(0, 1), [0.5] * 6, [0.7] * 6) == [None] * 6


def test_state_dict_round_trip_uses_the_history():
    train = [1.0, 0.9, 0.8, 0.7]
    val = [1.0, 1.1, 1.2, 1.3]
    first = OverfitDetectionCallback(warmup_epochs=0, window_size=3)
    run(first, train[:2], val[:2])
    resumed = OverfitDetectionCallback(warmup_epochs=0, window_size=3)
    resumed.load_state_dict(first.state_dict())
    carrier = Carrier()
    for epoch in (2, 3):
        resumed.on_epoch_end(carrier, epoch=epoch, train_loss=train[epoch], val_loss=val[epoch], metrics={})
    assert carrier._overfit_gap_ratio == pytest.approx(1.3 / 0.7)
