"""WandbLoggingCallback: one `wandb.log` per epoch with the losses, lr, metrics and the shared trainer signals."""

from __future__ import annotations

from tuneloop.callbacks.base import TrainingCallback


class WandbLoggingCallback(TrainingCallback):
    """Logs `trainer.epoch_record(...)` to W&B once per epoch; prints a summary line every 10 epochs.

    The run is started at `on_train_begin` with `init_kwargs` (project, group, id, name, config,
    mode, dir, ...; `resume="allow"` by default) unless a run is active, and finished at
    `on_train_end` when this callback started it. `summary` entries are set before finishing.
    """

    priority = 80

    def __init__(self, **init_kwargs):
        self.init_kwargs = {"resume": "allow", **init_kwargs}
        self.run = None
        self._owns_run = False
        self.summary: dict = {}

    def on_train_begin(self, trainer, **kwargs):
        import wandb

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
        for key, value in self.summary.items():
            self.run.summary[key] = value
        if self._owns_run:
            self.run.finish()
        self.run = None
