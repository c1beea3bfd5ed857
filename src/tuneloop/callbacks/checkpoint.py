"""CheckpointCallback: save the full training state periodically and the best by a monitored value."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from tuneloop.callbacks.base import NON_FINITE_STOP, TrainingCallback
from tuneloop.checkpoints import (STATE_FILE, BackgroundWriter, CheckpointManager, HostCopy, collect_state,
                                  write_state_into)

REPORTED_DIR = "reported"  # under the callback's directory: the (empty) directory a trial reports (publish_to)


class CheckpointCallback(TrainingCallback):
    """Runs last in `on_epoch_end` (95), so a checkpoint always holds a fully evaluated epoch.

    Saves every `save_every_n_epochs` epochs and at the last epoch (the planned last one, or the
    one after which a callback such as EarlyStopping ends training; not after a NaN/inf stop),
    keeps the `keep_last_k` latest periodic checkpoints (by epoch number), and keeps `best/` by
    `monitor` (`val_loss`, `train_loss` or a validation metric such as `val_accuracy`) and `mode`
    (unless `keep_best=False`). `durable=False` skips flushing files to disk: for a directory that
    only stages checkpoints that another component copies (Tune, inside a trial).
    The path of this epoch's periodic checkpoint (or None) is left in `trainer._epoch_checkpoint`.

    With `background=True` (`tuneloop train`; inside a trial see `publish_to`) only the copy of the
    state into host memory happens in `on_epoch_end`; serializing and writing run in a thread while
    the next epoch trains, so `trainer._epoch_checkpoint` names a directory still being written (it
    is complete at the next checkpoint and at `on_train_end`). The next checkpoint first waits for
    the one in flight, `on_train_end` waits for the last, and a failed write raises its error in the
    training thread (at the next epoch's start or end, at the latest in `on_train_end`). By default
    the checkpoint is complete when the callbacks after this one (a reporter that copies it) run.

    Under DDP: rank 0 only (`build_run` adds it there; its model state without DDP's `module.`
    prefix); the other ranks report no checkpoint and restore from rank 0's.
    """

    priority = 95

    def __init__(self, directory: str | Path, save_every_n_epochs: int = 1, keep_last_k: int = 3,
                 monitor: str = "val_loss", mode: str = "min", config_hash: str = "", keep_best: bool = True,
                 durable: bool = True, background: bool = False):
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
        self.background = background
        self._host_copy = HostCopy()
        self._writer = BackgroundWriter()
        self._destination: Callable[[], Path] | None = None  # see publish_to

    def publish_to(self, destination: Callable[[], Path]) -> None:
        """Inside a Tune trial on local storage: write each periodic checkpoint, in the background,
        straight into `destination()` — the directory Tune is about to persist this epoch's reported
        checkpoint as —, and leave an empty directory in `trainer._epoch_checkpoint` for the report
        (Tune's copy of it is then instant). Until the write completes, that checkpoint has no
        `state.pt`: a restore meanwhile (the process died) falls back to the previous one."""
        if self.keep_best:
            raise ValueError("publish_to needs keep_best=False: a trial's best checkpoint is kept by the sweep")
        self._destination = destination
        self.background = True

    def on_train_epoch_begin(self, trainer, **kwargs):
        trainer._epoch_checkpoint = None
        self._writer.raise_failure()

    def on_train_end(self, trainer, **kwargs):
        self._writer.wait()

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
        self._writer.wait()  # the host copy reuses its buffers: the previous state must be written
        state = collect_state(trainer, epoch, self.config_hash, val_loss=val_loss,
                              record=trainer.epoch_record(epoch, train_loss, val_loss, metrics), stop_reason=reason)
        if not self.background:
            written = self.manager.save_periodic(state, epoch) if due else None
            trainer._epoch_checkpoint = str(written) if due else None
            if better:
                self.manager.write_best(state, written=written / STATE_FILE if written else None)
            return
        state, ready = self._host_copy(state)
        if self._destination is not None:
            if due:
                reported = self.manager.root / REPORTED_DIR
                reported.mkdir(parents=True, exist_ok=True)
                trainer._epoch_checkpoint = str(reported)
                destination = self._destination()
                self._writer.start(lambda: self._write_into(state, ready, destination),
                                   f"the checkpoint of epoch {epoch}")
            return
        if due:
            trainer._epoch_checkpoint = str(self.manager.root / f"epoch_{epoch}")
        self._writer.start(lambda: self._save(state, ready, epoch, due, better), f"the checkpoint of epoch {epoch}")

    @staticmethod
    def _write_into(state: dict, ready: Callable[[], None], destination: Path) -> None:
        """In the background: the checkpoint into the directory Tune persists the report's as."""
        ready()
        write_state_into(state, destination)

    def _save(self, state: dict, ready: Callable[[], None], epoch: int, due: bool, best: bool) -> None:
        """In the background: the periodic checkpoint (then the oldest beyond keep_last_k go) and `best/`."""
        ready()
        written = self.manager.save_periodic(state, epoch) if due else None
        if best:  # best_value was set in on_epoch_end (the training thread owns it)
            self.manager.write_best(state, written=written / STATE_FILE if written else None)

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
