import math

import pytest

from tuneloop.callbacks import NaNDetectionCallback


@pytest.mark.parametrize("train, val, detected", [
    (1.0, 2.0, False), (math.nan, 1.0, True), (1.0, math.nan, True), (math.inf, 1.0, True),
    (1.0, -math.inf, True), (0.0, -3.5, False),
])
def test_non_finite_losses_are_detected(train, val, detected):
    callback = NaNDetectionCallback()
    callback.on_epoch_end(None, epoch=3, train_loss=train, val_loss=val, metrics={})
    assert callback.nan_detected is detected
    assert callback.stop_reason() == ("non_finite_loss" if detected else None)


def test_reset_at_train_begin():
    callback = NaNDetectionCallback()
    callback.on_epoch_end(None, epoch=0, train_loss=math.nan, val_loss=1.0, metrics={})
    callback.on_train_begin(None, epochs=2, start_epoch=0)
    assert not callback.nan_detected
