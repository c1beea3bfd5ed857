"""The training loop. Features live in callbacks (`tuneloop.callbacks`); this file only runs epochs."""

from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping

import torch

from tuneloop.callbacks.base import NON_FINITE_STOP, CallbackRunner, TrainingCallback

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Trainer:
    """Trains `model` for a number of epochs and fires the callback events around each step.

    `metrics` maps a name to `fn(outputs, targets) -> 0-dim tensor` (the batch mean); each is
    averaged over the validation set on the device and passed to callbacks as `val_<name>`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler,
        criterion: Callable,
        callbacks: CallbackRunner | Iterable[TrainingCallback] = (),
        device: str | torch.device = "cpu",
        metrics: Mapping[str, Metric] | None = None,
    ):
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.criterion = criterion
        self.callbacks = callbacks if isinstance(callbacks, CallbackRunner) else CallbackRunner(callbacks)
        self.metrics = dict(metrics or {})
        self.epochs: int = 0  # total epochs of the current `train()` call
        self.stop_reason: str | None = None  # why the last `train()` ended early, if it did

        # Shared attributes: producers write them, consumers read them (None = not produced).
        self._max_grad_norm: float | None = None  # GradientMonitorCallback: epoch's max grad L2 norm
        self._loss_prediction: float | None = None  # LossPredictionCallback: -log10(predicted final loss)
        self._overfit_gap_ratio: float | None = None  # OverfitDetectionCallback: val/train when diverging
        self._epoch_checkpoint: str | None = None  # CheckpointCallback: dir of this epoch's checkpoint

    def train(self, train_loader, val_loader, epochs: int, start_epoch: int = 0) -> float:
        """Train epochs `start_epoch … epochs-1`; return the last val_loss (inf after a NaN stop).

        on_train_begin
          for epoch in start_epoch … epochs-1:
            on_train_epoch_begin
              for batch: forward → backward → optimizer.step() → on_train_step_end
            on_val_begin
              validation forward passes (no grad)
            on_val_end
            on_epoch_end
            stop checks, in callback priority order (NaN → inf, early stop, …) → break
            scheduler.step()  (ReduceLROnPlateau: scheduler.step(val_loss))
        on_train_end  (always: normal end, stop, prune via SystemExit, or exception)
        """
        self.epochs = epochs
        self.stop_reason = None
        val_loss = math.nan
        try:
            self.callbacks.fire("on_train_begin", trainer=self, epochs=epochs, start_epoch=start_epoch)
            for epoch in range(start_epoch, epochs):
                train_loss = self.train_epoch(train_loader, epoch)
                val_loss, metrics = self.val_epoch(val_loader, epoch)
                self.callbacks.fire(
                    "on_epoch_end", trainer=self, epoch=epoch,
                    train_loss=train_loss, val_loss=val_loss, metrics=metrics,
                )
                self.stop_reason = self.callbacks.stop_reason()
                if self.stop_reason:
                    break
                if self.scheduler is not None:
                    if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                        self.scheduler.step(val_loss)  # the one built-in schedule that needs a metric
                    else:
                        self.scheduler.step()
        finally:
            self.callbacks.fire("on_train_end", trainer=self)
        return val_loss if math.isfinite(val_loss) and self.stop_reason != NON_FINITE_STOP else math.inf

    def train_epoch(self, loader, epoch: int) -> float:
        """One pass over `loader`; returns the sample-weighted mean loss (one host sync)."""
        self.model.train()
        self.callbacks.fire("on_train_epoch_begin", trainer=self, epoch=epoch)
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        loss_sum = torch.zeros((), device=self.device)
        count = 0
        for batch_idx, (inputs, targets) in enumerate(loader):
            inputs, targets = self._to_device(inputs), self._to_device(targets)
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.criterion(self.model(inputs), targets)
            loss.backward()
            self.optimizer.step()
            loss = loss.detach()
            n = len(targets)
            loss_sum += loss * n
            count += n
            self.callbacks.fire("on_train_step_end", trainer=self, batch_idx=batch_idx, loss=loss)
        _check_not_empty(count, "training", epoch)
        return float(loss_sum / count)

    @torch.no_grad()
    def val_epoch(self, loader, epoch: int) -> tuple[float, dict[str, float]]:
        """Validation pass: returns (val_loss, {"val_<metric>": value}), one host sync."""
        self.model.eval()
        self.callbacks.fire("on_val_begin", trainer=self, epoch=epoch)
        sums = torch.zeros(1 + len(self.metrics), device=self.device)
        count = 0
        for inputs, targets in loader:
            inputs, targets = self._to_device(inputs), self._to_device(targets)
            outputs = self.model(inputs)
            n = len(targets)
            values = [self.criterion(outputs, targets)] + [fn(outputs, targets) for fn in self.metrics.values()]
            sums += torch.stack([v.detach().float() for v in values]) * n
            count += n
        _check_not_empty(count, "validation", epoch)
        means = (sums / count).tolist()
        val_loss = means[0]
        metrics = {f"val_{name}": value for name, value in zip(self.metrics, means[1:])}
        self.callbacks.fire("on_val_end", trainer=self, epoch=epoch, val_loss=val_loss, metrics=metrics)
        return val_loss, metrics

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.device == self.device:
            return tensor
        # non_blocking only towards an accelerator: a non-blocking copy to the CPU may be read
        # before it has landed.
        return tensor.to(self.device, non_blocking=self.device.type != "cpu")

    def epoch_record(self, epoch: int, train_loss: float, val_loss: float, metrics: dict) -> dict:
        """The per-epoch record every logger and reporter uses (W&B, Tune, metrics.csv).

        Shared attributes are included only when their producer has set them; the loss
        prediction is given in loss units (`predicted_final_loss = 10**-_loss_prediction`).
        """
        record = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "lr": self.lr, **metrics}
        if self._max_grad_norm is not None:
            record["max_grad_norm"] = self._max_grad_norm
        if self._overfit_gap_ratio is not None:
            record["overfit_gap_ratio"] = self._overfit_gap_ratio
        if self._loss_prediction is not None:
            record["predicted_final_loss"] = 10.0 ** -self._loss_prediction
        return record

    @property
    def lr(self) -> float:
        """The learning rate of the optimizer's first parameter group."""
        return float(self.optimizer.param_groups[0]["lr"])


def _check_not_empty(count: int, which: str, epoch: int) -> None:
    """An epoch without samples has no loss: say so instead of reporting a loss of 0."""
    if count == 0:
        raise ValueError(
            f"the {which} loader gave no samples in epoch {epoch}; loaders must be re-iterable "
            f"collections of (inputs, targets) batches (a generator is used up after one pass)")
