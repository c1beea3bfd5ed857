"""CheckpointCallback: save the full training state periodically and the best by a monitored value."""

from __future__ import annotations

from pathlib import Path

from tuneloop.callbacks.base import NON_FINITE_STOP, TrainingCallback
from tuneloop.checkpoints import STATE_FILE, CheckpointManager, collect_state


class CheckpointCallback(TrainingCallback):
    """Runs last in `on_epoch_end` (95), so a checkpoint always holds a fully evaluated epoch.

    Saves every `save_every_n_epochs` epochs and at the last epoch (the planned last one, or the
    one after which a callback such as EarlyStopping ends training; not after a NaN/inf stop),
    keeps the `keep_last_k` latest periodic checkpoints (by epoch number), and keeps `best/` by
    `monitor` (`val_loss`, `train_loss` or a validation metric such as `val_accuracy`) and `mode`
    (unless `keep_best=False`). `durable=False` skips flushing files to disk: for a directory that
    only stages checkpoints that another component copies (Tune, inside a trial).
    The path of this epoch's periodic checkpoint (or None) is left in `trainer._epoch_checkpoint`.

    Under DDP: rank 0 only (`build_run` adds it there; its model state without DDP's `module.`
    prefix); the other ranks report no checkpoint and restore from rank 0's.
    """

    priority = 95

    def __init__(self, directory: str | Path, save_every_n_epochs: int = 1, keep_last_k: int = 3,
                 monitor: str = "val_loss", mode: str = "min", config_hash: str = "", keep_best: bool = True,
                 durable: bool = True):
        if save_every_n_epochs < 1:
            raise ValueError(f"save_every_n_epochs >= 1 must hold, but got {save_every_n_epochs}")
        if keep_last_k < 1:
            raise ValueError(f"keep_last_k >= 1 must hold, but got {keep_last_k}")
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be one of 'min', 'max', but got mode={mode!r}")
        self.save_every_n_epochs = save_every_n_epochs
        self.monitor = monitor
        self.config_hash = config_hash
        self.keep_best = keep_best
        self.manager = CheckpointManager(Path(directory), keep_last_k=keep_last_k, mode=mode, durable=durable)

    def on_train_epoch_begin(self, trainer, **kwargs):
        trainer._epoch_checkpoint = None

    def on_epoch_end(self, trainer, *, epoch, train_loss, val_loss, metrics, **kwargs):
        reason = trainer.callbacks.stop_reason()
        due = (epoch + 1) % self.save_every_n_epochs == 0 or epoch == trainer.epochs - 1
        if not due:  # a stop after this epoch makes it the last one (a NaN/inf state is not worth keeping)
            due = bool(reason) and reason != NON_FINITE_STOP
        better = False
        if self.keep_best:
            value = self._monitored(train_loss, val_loss, metrics)
            better = self.manager.is_better(value)
        if not (due or better):
            return
        if better:
            self.manager.best_value = float(value)  # before collecting, so the state holds it
        state = collect_state(trainer, epoch, self.config_hash, val_loss=val_loss,
                              record=trainer.epoch_record(epoch, train_loss, val_loss, metrics), stop_reason=reason)
        written = None
        if due:
            written = self.manager.save_periodic(state, epoch)
            trainer._epoch_checkpoint = str(written)
        if better:
            self.manager.save_best(state, value, written=written / STATE_FILE if written else None)

    def _monitored(self, train_loss, val_loss, metrics) -> float:
        if self.monitor == "val_loss":
            return val_loss
        if self.monitor == "train_loss":
            return train_loss
        try:
            return metrics[self.monitor]
        except KeyError:
            raise ValueError(f"CheckpointCallback: monitor {self.monitor!r} is not among this epoch's values; "
                           f"valid: {', '.join(['val_loss', 'train_loss', *metrics])}") from None

    def state_dict(self) -> dict:
        return {"best_value": self.manager.best_value}

    def load_state_dict(self, state: dict) -> None:
        self.manager.best_value = state["best_value"]
