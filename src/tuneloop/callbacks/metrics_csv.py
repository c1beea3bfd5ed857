"""MetricsCsvCallback: one row per epoch of the full epoch record in `metrics.csv`, rewritten atomically."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from tuneloop.callbacks.base import TrainingCallback
from tuneloop._io import atomic_write_text


class MetricsCsvCallback(TrainingCallback):
    """Keeps every epoch's record (`rows`) and rewrites `path` after each epoch, so a reader
    never sees a partial file; columns are the union of keys seen so far, in first-seen order.
    The rows are part of checkpoints: a resumed run's file holds every epoch once.

    Under DDP: rank 0 only (the trial adds it there), with the numbers averaged over the ranks.
    """

    priority = 94  # after every producer of the record (<= 90), before CheckpointCallback (95): the
    # epoch's checkpoint holds its row

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rows: list[dict] = []

    def on_epoch_end(self, trainer, *, epoch, train_loss, val_loss, metrics, **kwargs):
        self.rows.append(trainer.epoch_record(epoch, train_loss, val_loss, metrics))
        self.write()

    def keep_until(self, epoch: int) -> None:
        """Drop the rows after `epoch` and rewrite the file (a run that really ended there)."""
        self.rows = [row for row in self.rows if row["epoch"] <= epoch]
        self.write()

    def write(self) -> None:
        """Rewrite `path` atomically with every row."""
        columns = list(dict.fromkeys(key for row in self.rows for key in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, buffer.getvalue())

    def state_dict(self) -> dict:
        return {"rows": [dict(row) for row in self.rows]}

    def load_state_dict(self, state: dict) -> None:
        self.rows = [dict(row) for row in state["rows"]]
