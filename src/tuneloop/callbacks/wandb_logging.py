"""WandbLoggingCallback: one `wandb.log` per epoch with the losses, lr, metrics and the shared trainer signals."""

from __future__ import annotations

import math
import sys

from tuneloop.callbacks.base import TrainingCallback


class WandbLoggingCallback(TrainingCallback):
    """Logs `trainer.epoch_record(...)` to W&B once per epoch; prints a summary line every 10 epochs.

    The run is started at `on_train_begin` with `init_kwargs` (project, group, id, name, config,
    mode, dir, ...; `resume="allow"` by default) unless a run is active, and finished at
    `on_train_end` when this callback started it. Before that, the run's summary gets
    `final_state` (complete / pruned / failed, by the same rule as the Optuna study),
    `best_val_loss` (finite values only; kept in checkpoints, so a resumed run knows the epochs
    before), `epochs_trained`, then the `summary` entries, and `stop_reason`: "complete", the
    trainer's stop reason ("early_stopping", "non_finite_loss", "pruned" when a scheduler stopped
    the trial) or "error: <exception type>". A run that ended with an exception is finished with
    exit code 1, so W&B shows it as failed; a pruned run finishes normally.

    Under DDP: rank 0 only (`build_run` adds it there): one W&B run per trial.
    """

    priority = 80

    def __init__(self, **init_kwargs):
        self.init_kwargs = {"resume": "allow", **init_kwargs}
        self.run = None
        self._owns_run = False
        self.summary: dict = {}
        self.best_val_loss: float | None = None
        self.epochs_trained = 0
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
        if math.isfinite(val_loss) and (self.best_val_loss is None or val_loss < self.best_val_loss):
            self.best_val_loss = float(val_loss)
        self.epochs_trained = epoch + 1
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
            run.summary["final_state"] = FINAL_STATES.get(reason, "failed" if exit_code else "complete")
            if self.best_val_loss is not None:
                run.summary["best_val_loss"] = self.best_val_loss
            run.summary["epochs_trained"] = self.epochs_trained
            for key, value in self.summary.items():
                run.summary[key] = value
            run.summary["stop_reason"] = reason
        finally:
            if self._owns_run:
                run.finish(exit_code=exit_code)


    def state_dict(self) -> dict:
        return {"best_val_loss": self.best_val_loss}

    def load_state_dict(self, state: dict) -> None:
        self.best_val_loss = state["best_val_loss"]


# stop_reason → final_state; any other reason of the trial's own is complete, an error failed
FINAL_STATES = {"pruned": "pruned", "exit": "pruned", "non_finite_loss": "failed"}


def _outcome(trainer, error: BaseException | None) -> tuple[str, int]:
    """(stop_reason, exit_code) of the training that is ending. `error` is the exception on its way
    out of `train()`, if any: `on_train_end` runs in the Trainer's `finally`, where it is visible."""
    stopped = getattr(trainer, "stop_reason", None)
    if stopped and (error is None or isinstance(error, SystemExit)):  # a scheduler's STOP, or its own end
        return stopped, 0
    if isinstance(error, SystemExit):
        code = error.code
        return "exit", code if isinstance(code, int) else (0 if code is None else 1)
    if error is not None:
        return f"error: {type(error).__name__}", 1
    return "complete", 0
