"""The training loop. Features live in callbacks (`tuneloop.callbacks`); this file only runs epochs."""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterable, Mapping

import torch

from tuneloop.batches import describe, sample_count, to_device
from tuneloop.callbacks.base import NON_FINITE_STOP, CallbackRunner, TrainingCallback
from tuneloop.ranks import share_buffers, summed

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


_NO_AUTOCAST = contextlib.nullcontext()
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # run.precision → autocast dtype


class Trainer:
    """Trains `model` for a number of epochs and fires the callback events around each step.

    A batch may have any structure (a pair, a tuple, a dict, a dataclass, ...): every tensor in
    it moves to `device`. `compute_loss(batch)` turns a batch into `(loss, outputs, targets)`:
    override it for a custom step (a model that computes its own loss, dict batches). `metrics`
    maps a name to `fn(outputs, targets) -> 0-dim tensor` (the batch mean); each is averaged over
    the validation set on the device and passed to callbacks as `val_<name>`.

    `precision`: "fp32", or "bf16"/"fp16" autocast around `compute_loss` (fp16 with a GradScaler).
    `accumulate_steps`: the optimizer steps every k batches (and after the epoch's last batch),
    each batch's loss divided by the number of batches in its step.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler,
        criterion: Callable | None,
        callbacks: CallbackRunner | Iterable[TrainingCallback] = (),
        device: str | torch.device = "cpu",
        metrics: Mapping[str, Metric] | None = None,
        precision: str = "fp32",
        accumulate_steps: int = 1,
    ):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, but got {precision!r}")
        if accumulate_steps < 1:
            raise ValueError(f"accumulate_steps >= 1 must hold, but got {accumulate_steps}")
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.criterion = criterion
        self.callbacks = callbacks if isinstance(callbacks, CallbackRunner) else CallbackRunner(callbacks)
        self.metrics = dict(metrics or {})
        self.precision = precision
        self.accumulate_steps = accumulate_steps
        # fp16 needs loss scaling; fp32 and bf16 step the optimizer directly
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")
        self.epochs: int = 0  # total epochs of the current `train()` call
        self.stop_reason: str | None = None  # why the last `train()` ended early, if it did
        # Data parallelism (set by tuneloop.training.build.build_run from torch.distributed, e.g. in a trial on
        # several Ray Train workers): this process's rank and how many train together; epoch sums meet over them.
        self.rank: int = 0
        self.world_size: int = 1

        # Shared attributes: producers write them, consumers read them (None = not produced).
        self._max_grad_norm: float | None = None  # GradientMonitorCallback: epoch's max grad L2 norm
        self._loss_prediction: float | None = None  # LossPredictionCallback: -log10(predicted final loss)
        self._overfit_gap_ratio: float | None = None  # OverfitDetectionCallback: val/train when diverging
        self._epoch_checkpoint: str | None = None  # CheckpointCallback: this epoch's checkpoint dir (its `background`)

    def train(self, train_loader, val_loader, epochs: int, start_epoch: int = 0) -> float:
        """Train epochs `start_epoch … epochs-1`; return the last val_loss (inf after a NaN stop).

        on_train_begin
          for epoch in start_epoch … epochs-1:
            on_train_epoch_begin
              for batch: compute_loss → backward
                every accumulate_steps batches (and after the last):
                  on_before_optimizer_step → optimizer.step()
                on_train_step_end
            on_val_begin
              validation compute_loss (no grad)
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
        """One pass over `loader`; returns the sample-weighted mean loss (one host sync; over every rank
        when several processes train together)."""
        self.model.train()
        self.callbacks.fire("on_train_epoch_begin", trainer=self, epoch=epoch)
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        batches = _length(loader)
        loss_sum = torch.zeros((), device=self.device)
        count = 0
        for batch_idx, batch in enumerate(loader):
            if batch_idx % self.accumulate_steps == 0:
                self.optimizer.zero_grad(set_to_none=True)  # the gradients stay readable until the next step begins
            batch = self.to_device(batch)
            with self.autocast():
                loss, _, targets = self.compute_loss(batch)
            in_step = self._batches_in_step(batch_idx, batches)
            self._backward(loss / in_step if in_step > 1 else loss)
            if (batch_idx + 1) % self.accumulate_steps == 0 or batch_idx + 1 == batches:
                self.optimizer_step()
            loss = loss.detach()
            if loss.dtype != torch.float32:  # (an fp32 loss as it is: one dispatch less per step)
                loss = loss.float()
            n = sample_count(batch, targets)
            loss_sum.add_(loss, alpha=n)  # one device op: loss_sum += n * loss
            count += n
            self.callbacks.fire("on_train_step_end", trainer=self, batch_idx=batch_idx, loss=loss)
        if batches is None and count and (batch_idx + 1) % self.accumulate_steps:
            self.optimizer_step()  # a loader without a length: its last, partial step
        loss_sum, count = summed(self.world_size, loss_sum, count)  # over every rank (one all_reduce)
        _check_not_empty(count, "training", epoch)
        return float(loss_sum / count)

    def optimizer_step(self) -> None:
        """Unscale the gradients (fp16), fire on_before_optimizer_step, step (unless the scaler
        skips a step with non-finite gradients)."""
        if not self.scaler.is_enabled():
            self.callbacks.fire("on_before_optimizer_step", trainer=self, optimizer=self.optimizer)
            self.optimizer.step()
            return
        self.scaler.unscale_(self.optimizer)
        self.callbacks.fire("on_before_optimizer_step", trainer=self, optimizer=self.optimizer)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    @torch.no_grad()
    def val_epoch(self, loader, epoch: int) -> tuple[float, dict[str, float]]:
        """Validation pass: returns (val_loss, {"val_<metric>": value}), one host sync. With several
        ranks: rank 0's buffers first (`share_buffers`), then no collective until the sums meet, so
        the ranks' numbers of validation batches may differ."""
        share_buffers(self.world_size, self.model)
        self.model.eval()
        self.callbacks.fire("on_val_begin", trainer=self, epoch=epoch)
        loss_sum = torch.zeros((), device=self.device)
        metric_sums = torch.zeros(len(self.metrics), device=self.device)
        count = metric_count = 0
        for batch in loader:
            batch = self.to_device(batch)
            with self.autocast():
                loss, outputs, targets = self.compute_loss(batch)
            n = sample_count(batch, targets)
            loss_sum.add_(loss.detach().float(), alpha=n)
            count += n
            if self.metrics and outputs is not None and targets is not None:
                values = [fn(outputs, targets).detach().float() for fn in self.metrics.values()]
                metric_sums.add_(torch.stack(values), alpha=n)
                metric_count += n
        sums, count, metric_count = summed(self.world_size, torch.cat([loss_sum.reshape(1), metric_sums]),
                                           count, metric_count)  # over every rank (one all_reduce)
        _check_not_empty(count, "validation", epoch)
        sums = sums.tolist()
        val_loss = sums[0] / count
        metrics = {f"val_{name}": (value / metric_count if metric_count else math.nan)
                   for name, value in zip(self.metrics, sums[1:])}
        self.callbacks.fire("on_val_end", trainer=self, epoch=epoch, val_loss=val_loss, metrics=metrics)
        return val_loss, metrics

    def compute_loss(self, batch) -> tuple[torch.Tensor, object, object]:
        """`(loss, outputs, targets)` of one batch (on the device): override for a custom step.

        The default takes a pair `(inputs, targets)` and applies the criterion. `outputs` and
        `targets` feed the metrics; either may be None (no metrics for that batch).
        """
        if self.criterion is None:
            raise TypeError("the default Trainer.compute_loss applies the criterion, but run.criterion is null: "
                            "set one, or set run.trainer to a Trainer subclass whose compute_loss makes the loss")
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise TypeError("the default Trainer.compute_loss needs a pair (inputs, targets), but got "
                            f"{describe(batch)}: override compute_loss (run.trainer) for other batches")
        inputs, targets = batch
        outputs = self.model(inputs)
        return self.criterion(outputs, targets), outputs, targets

    def _backward(self, loss: torch.Tensor) -> None:
        """Backward from `loss`, scaled under fp16."""
        (self.scaler.scale(loss) if self.scaler.is_enabled() else loss).backward()

    def to_device(self, batch):
        """`batch` with every tensor in it on the trainer's device."""
        return to_device(batch, self.device)

    def autocast(self):
        """The autocast context of `precision` (a no-op one for fp32)."""
        dtype = PRECISIONS[self.precision]
        return _NO_AUTOCAST if dtype is None else torch.autocast(self.device.type, dtype=dtype)

    def _batches_in_step(self, batch_idx: int, batches: int | None) -> int:
        """How many batches the optimizer step of batch `batch_idx` averages over."""
        first = batch_idx - batch_idx % self.accumulate_steps
        return self.accumulate_steps if batches is None else min(self.accumulate_steps, batches - first)

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


def _length(loader) -> int | None:
    """The number of batches of `loader`, or None when it has no length (an iterable dataset)."""
    try:
        return len(loader)
    except TypeError:
        return None


def _check_not_empty(count: int, which: str, epoch: int) -> None:
    """An epoch without samples has no loss: say so instead of reporting a loss of 0."""
    if count == 0:
        raise ValueError(
            f"the {which} loader gave no samples in epoch {epoch}; loaders must be re-iterable "
            f"collections of batches (a generator is used up after one pass)")
