"""Faults that `tuneloop train` test experiments inject into their own run (imported by path)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tuneloop.callbacks import TrainingCallback


class InterruptAfterEpoch(TrainingCallback):
    """Sends SIGINT to its own process (as Ctrl-C in a terminal does) at the end of epoch `epoch`
    (0-based), after that epoch's metrics.csv row and checkpoint were written (priority 99); once:
    the file `marker` records it, so a resumed run that trains `epoch` again goes on."""

    priority = 99

    def __init__(self, epoch: int, marker: str):
        self.epoch, self.marker = epoch, Path(marker)

    def on_epoch_end(self, trainer, *, epoch, **kwargs):
        """SIGINT at the end of `epoch`, the first time only."""
        if epoch == self.epoch and not self.marker.exists():
            self.marker.write_text(str(epoch))
            os.kill(os.getpid(), signal.SIGINT)
