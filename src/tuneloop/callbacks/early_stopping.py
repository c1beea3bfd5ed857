"""EarlyStoppingCallback: stop after `patience` epochs without a relative improvement of the monitor."""

import math

from tuneloop.callbacks.base import TrainingCallback


class EarlyStoppingCallback(TrainingCallback):
    """An epoch improves when `best - v > min_delta·|best|` (mode min; mirrored for max).

    Ties and changes within the threshold are not improvements; works for negative and zero values.
    `monitor` is `val_loss` or a key of the validation metrics (e.g. `val_accuracy`).

    Under DDP: on every rank, on the averaged metric, so the ranks agree; the StopAgreementCallback
    makes any rank's stop every rank's in the same epoch.
    """

    priority = 90

    def __init__(self, patience: int = 20, mode: str = "min", min_delta: float = 1e-4, monitor: str = "val_loss"):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be one of 'min', 'max', but got mode={mode!r}")
        if patience < 1:
            raise ValueError(f"patience >= 1 must hold, but got patience={patience}")
        self.patience = int(patience)
        self.mode = mode
        self.min_delta = float(min_delta)
        self.monitor = monitor
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.wait = 0
        self.should_stop = False

    def improves(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        gain = (self.best - value) if self.mode == "min" else (value - self.best)
        return gain > self.min_delta * abs(self.best)

    def on_val_end(self, trainer, *, epoch, val_loss, metrics, **kwargs):
        value = val_loss if self.monitor == "val_loss" else metrics[self.monitor]
        if self.improves(value):
            self.best, self.best_epoch, self.wait = float(value), int(epoch), 0
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.should_stop = True

    def stop_reason(self):
        return "early_stopping" if self.should_stop else None

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait,
                "should_stop": self.should_stop}

    def load_state_dict(self, state: dict) -> None:
        self.best = state["best"]
        self.best_epoch = state["best_epoch"]
        self.wait = int(state["wait"])
        self.should_stop = bool(state["should_stop"])
