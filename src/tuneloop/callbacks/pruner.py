"""PrunerCallback: the bridge to Ray Tune — one `tune.report` per epoch, after the checkpoint is written.

The seed runs it at priority 85, but Tune wants metrics and checkpoint in one call, so its
`on_epoch_end` runs at priority 100 (`hook_priority`): after every producer has written its shared
attribute and after CheckpointCallback (95) has left the epoch's checkpoint directory in
`trainer._epoch_checkpoint`. It then sends `trainer.epoch_record(...)` in a single report. A scheduler STOP arrives as `SystemExit` from
the report; it passes through unchanged (the Trainer still fires `on_train_end`), after the callback
has set `trainer.stop_reason = "pruned"` so that `on_train_end` hooks (W&B) can mark the run.
"""

from __future__ import annotations

import time
from typing import Callable

from tuneloop.callbacks.base import TrainingCallback

PRUNED = "pruned"  # `trainer.stop_reason` after `report` raised SystemExit (a scheduler stopped the trial)


class PrunerCallback(TrainingCallback):
    """Reports each epoch's metrics (and checkpoint, when one was written) through `report`.

    `report(metrics: dict, checkpoint_dir: str | None)` defaults to Ray Tune's `tune.report`;
    it is only added to the callbacks inside a Tune trial. Besides the epoch record, each report
    says whether this epoch is the trial's own end — `trial_done` (bool) and `done_reason`
    ("complete" at the last epoch, or the stop reason: "early_stopping", "non_finite_loss", ...;
    "" otherwise) — so the Optuna study can tell a trial that ended itself from a pruned one.

    Under DDP (a trial on several Ray Train workers, `tuneloop.tune.distributed`): on every rank,
    whose `report` is `ray.train.report` (a barrier: every rank once per epoch; rank 0's record, with
    its checkpoint, is the one forwarded to Tune); a scheduler's STOP arrives as SystemExit on every
    rank at the same epoch (rank 0 reads it, all agree).
    """

    priority = 85
    hook_priority = {"on_epoch_end": 100}

    def __init__(self, report: Callable[[dict, str | None], None] | None = None, static: dict | None = None):
        self.report = report or _tune_report
        self.static = dict(static or {})  # sent with every report (e.g. node id, pid, GPU ids)
        self.reports = 0
        self.last_epoch: int | None = None  # the epoch of the last report sent

    def on_epoch_end(self, trainer, *, epoch, train_loss, val_loss, metrics, **kwargs):
        record = trainer.epoch_record(epoch, train_loss, val_loss, metrics)
        reason = trainer.callbacks.stop_reason() or ("complete" if epoch == trainer.epochs - 1 else "")
        try:
            self._send(record, reason, trainer._epoch_checkpoint)
        except SystemExit:  # a scheduler STOP; on_train_end hooks (W&B) see why the trial ended
            # A STOP answering the trial's own last report (ASHA does so at max_t) prunes nothing.
            trainer.stop_reason = reason or PRUNED
            raise

    def report_end(self, record: dict, reason: str) -> None:
        """Report again the last epoch of a trial restored from the checkpoint of its own end
        (`record` and `reason` as that checkpoint holds them): it has nothing left to train, and
        its end reaches Tune, the study and the results as if it had just happened. A STOP in
        reply (SystemExit) passes through, as after any last epoch: a trial function that returns
        after a STOP would block Ray's thread in its final report, and the actor could not be reused."""
        self._send(dict(record), reason, None)

    def report_lost(self, records: list[dict]) -> None:
        """Report again epochs whose reports Tune lost (its experiment snapshot was taken before them
        and the driver died), from the records of the checkpoint the trial continues from. A
        scheduler STOP in reply passes through (SystemExit): the trial ends at that epoch, as it
        would have then."""
        for record in records:
            self._send(dict(record), "", None)

    def _send(self, record: dict, reason: str, checkpoint_dir: str | None) -> None:
        record.update(self.static, trial_done=bool(reason), done_reason=reason, reported_at=time.time())
        self.reports += 1
        self.last_epoch = record.get("epoch")
        self.report(record, checkpoint_dir)


def _tune_report(metrics: dict, checkpoint_dir: str | None) -> None:
    from ray import tune

    checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
    tune.report(metrics, checkpoint=checkpoint)
