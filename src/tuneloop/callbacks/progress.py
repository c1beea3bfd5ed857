"""ProgressCallback: a progress bar over epochs (on a terminal) and one line per epoch."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from tuneloop.callbacks.base import TrainingCallback

SHOWN = ("train_loss", "val_loss", "lr", "max_grad_norm", "predicted_final_loss", "overfit_gap_ratio")


class ProgressCallback(TrainingCallback):
    """Prints `epoch N/M  train_loss=… val_loss=… <metrics> (x.xs)` after every epoch.

    Under DDP: prints on every rank (the same averaged numbers); `tuneloop train` runs one process.
    """

    priority = 97

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.bar = None

    def on_train_begin(self, trainer, *, epochs, start_epoch, **kwargs):
        self.bar = tqdm(total=epochs, initial=start_epoch, unit="epoch", leave=False, dynamic_ncols=True,
                        disable=not sys.stderr.isatty())
        self.started = time.perf_counter()

    def on_epoch_end(self, trainer, *, epoch, train_loss, val_loss, metrics, **kwargs):
        record = trainer.epoch_record(epoch, train_loss, val_loss, metrics)
        shown = "  ".join(f"{k}={record[k]:.4g}" for k in (*SHOWN[:3], *metrics, *SHOWN[3:]) if k in record)
        elapsed = time.perf_counter() - self.started
        tqdm.write(f"epoch {epoch + 1}/{trainer.epochs}  {shown}  ({elapsed:.1f}s)", file=self.stream)
        self.bar.update(1)

    def on_train_end(self, trainer, **kwargs):
        if self.bar is not None:
            self.bar.close()
