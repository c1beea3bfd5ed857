import math

import pytest

from tuneloop.callbacks import EarlyStoppingCallback


def feed(callback, values, start=0, key="val_loss"):
    for epoch, value in enumerate(values, start=start):
        metrics = {} if key == "val_loss" else {key: value}
        callback.on_val_end(None, epoch=epoch, val_loss=value if key == "val_loss" else 0.0, metrics=metrics)
    return callback


def test_relative_threshold_and_patience():
    es = feed(EarlyStoppingCallback(patience=2, min_delta=0.1), [1.0, 0.95, 0.89])
    # 0.95 is within 10% of 1.0 (no improvement), 0.89 improves by 11%
    assert es.best == 0.89 and es.best_epoch == 2 and es.wait == 0 and not es.should_stop
    feed(es, [0.85, 0.84], start=3)
    assert es.should_stop and es.stop_reason() == "early_stopping"


def test_ties_are_not_improvements():
    es = feed(EarlyStoppingCallback(patience=3, min_delta=0.0), [0.5, 0.5, 0.5, 0.5])
    assert es.best_epoch == 0 and es.should_stop


def test_negative_losses():
    es = feed(EarlyStoppingCallback(patience=2, min_delta=0.1), [-1.0, -1.05, -1.2])
    # best - v = -1.0 - (-1.05) = 0.05 <= 0.1*|−1| → not better; -1.2 improves by 0.2 > 0.1
    assert es.best == -1.2 and es.best_epoch == 2 and es.wait == 0


def test_zero_best_needs_any_strict_improvement():
    es = feed(EarlyStoppingCallback(patience=5, min_delta=0.5), [0.0, 0.0, -1e-9])
    assert es.best == -1e-9 and es.best_epoch == 2


def test_mode_max_mirrors_on_a_metric():
    es = EarlyStoppingCallback(patience=2, mode="max", min_delta=0.01, monitor="val_accuracy")
    feed(es, [0.80, 0.805, 0.90, 0.90, 0.905], key="val_accuracy")
    assert es.best == 0.90 and es.best_epoch == 2 and es.should_stop


def test_nan_is_never_an_improvement():
    es = feed(EarlyStoppingCallback(patience=1), [math.nan])
    assert es.best is None and es.should_stop


def test_state_dict_round_trip_continues_identically():
    values = [1.0, 0.9, 0.91, 0.8, 0.81, 0.82, 0.83, 0.7, 0.71, 0.72]
    whole = EarlyStoppingCallback(patience=3, min_delta=0.01)
    first = EarlyStoppingCallback(patience=3, min_delta=0.01)
    feed(first, values[:5])
    resumed = EarlyStoppingCallback(patience=3, min_delta=0.01)
    resumed.load_state_dict(first.state_dict())
    decisions_whole = []
    for epoch, value in enumerate(values):
        feed(whole, [value], start=epoch)
        decisions_whole.append((whole.best, whole.wait, whole.should_stop))
    decisions_resumed = []
    for epoch, value in enumerate(values[5:], start=5):
        feed(resumed, [value], start=epoch)
        decisions_resumed.append((resumed.best, resumed.wait, resumed.should_stop))
    assert decisions_resumed == decisions_whole[5:]


@pytest.mark.parametrize("kwargs", [{"mode": "minimum"}, {"patience": 0}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        EarlyStoppingCallback(**kwargs)
