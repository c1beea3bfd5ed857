"""Rank 0's files of a distributed trial (`tuneloop.tune.distributed`) on remote storage."""

from __future__ import annotations

from pathlib import Path

from tuneloop.callbacks.base import TrainingCallback
from tuneloop.storage import Storage


class UploadFiles(TrainingCallback):
    """Rank 0's files (`names` in `local`) copied into the trial's directory on remote storage
    (`storage`) after each epoch and as training ends, one PUT each. Rank 0 may run on another host
    than the Tune trial, whose working directory is what Ray syncs to the storage: a file written
    under that path on rank 0's host would never reach it."""

    priority = 96  # after MetricsCsvCallback (94) wrote the epoch's row

    def __init__(self, local: Path, storage: Storage, names: list[str]):
        self.local, self.storage, self.names = Path(local), storage, list(names)

    def on_epoch_end(self, trainer, **kwargs):
        self.upload()

    def on_train_end(self, trainer, **kwargs):
        self.upload()

    def upload(self) -> None:
        for name in self.names:
            path = self.local / name
            if path.exists():
                self.storage.write_bytes(name, path.read_bytes())
