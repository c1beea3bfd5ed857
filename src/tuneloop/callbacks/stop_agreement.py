"""StopAgreementCallback: under data parallelism, a stop decided by any rank stops every rank in the same epoch."""

from __future__ import annotations

from tuneloop.callbacks.base import NON_FINITE_STOP, TrainingCallback
from tuneloop.ranks import agreed_stop


class StopAgreementCallback(TrainingCallback):
    """Each rank's stop reason after `on_epoch_end` producers have run, gathered once per epoch
    (`tuneloop.ranks.agreed_stop`): a rank that did not stop itself takes the agreed reason, so
    every rank leaves the loop after the same epoch (one that went on alone would wait forever in
    its next all_reduce). A NaN/inf stop anywhere wins, as in one process.

    Priority 93: after the built-in stop producers (NaNDetection 5 at `on_epoch_end`, EarlyStopping
    90 at `on_val_end`), before MetricsCsv (94), Checkpoint (95) and the Pruner's report (100), which
    then all see the agreed reason. Losses and metrics are averaged over the ranks before any
    callback sees them, so the built-ins agree anyway; the gathering covers callbacks that decide
    on something of their own rank. A user callback that stops training from `on_epoch_end` under
    DDP must run before 93. Added by `build_run` only when more than one process trains.
    """

    priority = 93

    def __init__(self):
        self.reason: str | None = None

    def on_train_begin(self, trainer, **kwargs):
        self.reason = None

    def on_epoch_end(self, trainer, **kwargs):
        own = trainer.callbacks.stop_reason()
        self.reason = agreed_stop(trainer.world_size, own, wins=NON_FINITE_STOP)

    def stop_reason(self) -> str | None:
        return self.reason
