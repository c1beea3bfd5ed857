"""CheckpointCallback: save the full training state periodically and the best by a monitored value."""

from __future__ import annotations

from pathlib import Path

from tuneloop.callbacks.base import TrainingCallback
from tuneloop.checkpointing import STATE_FILE, CheckpointManager, collect_state


class CheckpointCallback(TrainingCallback):
    """Runs last in `on_epoch_end` (95), so a checkpoint always holds a fully evaluated epoch.

    Saves every `save_every_n_epochs` epochs and at the last epoch, keeps the `keep_last_k`
    latest periodic checkpoints (by epoch number), and keeps `best/` by `monitor`/`mode`
    (unless `keep_best=False`).
    The path of this epoch's periodic checkpoint (or None) is left in `trainer._epoch_checkpoint`.
    """

    priority = 95

    def __init__(self, directory: str | Path, save_every_n_epochs: int = 1, keep_last_k: int = 3,
                 monitor: str = "val_loss", mode: str = "min", config_hash: str = "", keep_best: bool = True):
        if save_every_n_epochs < 1:
            raise ValueError(f"save_every_n_epochs >= 1 must hold, but got {save_every_n_epochs}")
        if keep_last_k < 1:
            raise ValueError(f"keep_last_k >= 1 must hold, but got {keep_last_k}")
        self.save_every_n_epochs = save_every_n_epochs
        self.monitor = monitor
        self.config_hash = config_hash
        self.keep_best = keep_best
        self.manager = CheckpointManager(Path(directory), keep_last_k=keep_last_k, mode=mode)

    def on_train_epoch_begin(self, trainer, **kwargs):
        trainer._epoch_checkpoint = None

    def on_epoch_end(self, trainer, *, epoch, val_loss, metrics, **kwargs):
        due = (epoch + 1) % self.save_every_n_epochs == 0 or epoch == trainer.epochs - 1
        value = val_loss if self.monitor == "val_loss" else metrics[self.monitor]
        better = self.keep_best and self.manager.is_better(value)
        if not (due or better):
            return
        if better:
            self.manager.best_value = float(value)  # before collecting, so the state holds it
        state = collect_state(trainer, epoch, self.config_hash)
        written = None
        if due:
            written = self.manager.save_periodic(state, epoch)
            trainer._epoch_checkpoint = str(written)
        if better:
            self.manager.save_best(state, value, written=written / STATE_FILE if written else None)

    def state_dict(self) -> dict:
        return {"best_value": self.manager.best_value}

    def load_state_dict(self, state: dict) -> None:
        self.manager.best_value = state["best_value"]
