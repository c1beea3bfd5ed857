"""NaNDetectionCallback: stop training after an epoch whose train or val loss is not finite."""

import math

from tuneloop.callbacks.base import NON_FINITE_STOP, TrainingCallback


class NaNDetectionCallback(TrainingCallback):
    """Sets `nan_detected` when train_loss or val_loss is NaN/inf; the Trainer then stops and returns inf.

    Under DDP (several workers): every rank sees the losses averaged over the ranks, so a NaN on any rank
    is a NaN on all, and every rank stops after the same epoch (StopAgreementCallback).
    """

    priority = 5

    def __init__(self):
        self.nan_detected = False

    def on_train_begin(self, trainer, **kwargs):
        self.nan_detected = False

    def on_epoch_end(self, trainer, *, epoch, train_loss, val_loss, **kwargs):
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            self.nan_detected = True
            print(f"[tuneloop] epoch {epoch}: non-finite loss (train_loss={train_loss}, "
                  f"val_loss={val_loss}); stopping", flush=True)

    def stop_reason(self):
        return NON_FINITE_STOP if self.nan_detected else None
