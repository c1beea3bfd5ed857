"""WandbLoggingCallback: one `wandb.log` per epoch with the losses, lr, metrics and the shared trainer signals."""

from __future__ import annotations

import sys

from tuneloop.callbacks.base import TrainingCallback


class WandbLoggingCallback(TrainingCallback):
    """Logs `trainer.epoch_record(...)` to W&B once per epoch; prints a summary line every 10 epochs.

    The run is started at `on_train_begin` with `init_kwargs` (project, group, id, name, config,
    mode, dir, ...; `resume="allow"` by default) unless a run is active, and finished at
    `on_train_end` when this callback started it. Before that, the `summary` entries and
    `stop_reason` are written to the run's summary: "complete", the trainer's stop reason
    ("early_stopping", "non_finite_loss", "pruned" when a scheduler stopped the trial) or
    "error: <exception type>". A run that ended with an exception is finished with exit code 1,
    so W&B shows it as failed; a pruned run finishes normally.
    """

    priority = 80

    def __init__(self, **init_kwargs):
        self.init_kwargs = {"resume": "allow", **init_kwargs}
        self.run = None
        self._owns_run = False
        self.summary: dict = {}
        self._outer_error = None  # an exception already being handled where train() was called

    def on_train_begin(self, trainer, **kwargs):
        import wandb

        self._outer_error = sys.exc_info()[1]
        if wandb.run is not None:
            self.run, self._owns_run = wandb.run, False
        else:
            self.run, self._owns_run = wandb.init(**self.init_kwargs), True

    def on_epoch_end(self, trainer, *, epoch, train_loss, val_loss, metrics, **kwargs):
        record = trainer.epoch_record(epoch, train_loss, val_loss, metrics)
        self.run.log(record)
        if (epoch + 1) % 10 == 0:
            shown = " ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch")
            print(f"[wandb] epoch {epoch}: {shown}", flush=True)

    def on_train_end(self, trainer, **kwargs):
        if self.run is None:
            return
        run, self.run = self.run, None
        error = sys.exc_info()[1]
        reason, exit_code = _outcome(trainer, None if error is self._outer_error else error)
        try:
            for key, value in self.summary.items():
                run.summary[key] = value
            run.summary["stop_reason"] = reason
        finally:
            if self._owns_run:
                run.finish(exit_code=exit_code)


def _outcome(trainer, error: BaseException | None) -> tuple[str, int]:
    """(stop_reason, exit_code) of the training that is ending. `error` is the exception on its way
    out of `train()`, if any: `on_train_end` runs in the Trainer's `finally`, where it is visible."""
    stopped = getattr(trainer, "stop_reason", None)
    if stopped == "pruned" or (stopped and error is None):
        return stopped, 0
    if isinstance(error, SystemExit):
        code = error.code
        return "exit", code if isinstance(code, int) else (0 if code is None else 1)
    if error is not None:
        return f"error: {type(error).__name__}", 1
    return "complete", 0
