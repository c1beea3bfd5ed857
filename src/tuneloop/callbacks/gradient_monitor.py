"""GradientMonitorCallback: per-step gradient L2 norm, epoch max in `trainer._max_grad_norm`."""

import math

import torch

from tuneloop.callbacks.base import TrainingCallback


class GradientMonitorCallback(TrainingCallback):
    """Tracks the largest gradient norm of each epoch on the device (no host sync per step).

    The norm is taken before each optimizer step (before any clipping, after fp16 unscaling).
    Steps whose norm exceeds `warn_threshold` are counted and reported in one line at epoch end;
    a NaN/inf norm propagates into the epoch max and is reported, never hidden, except under fp16
    loss scaling, where a non-finite gradient makes the scaler skip that step (it is left out).
    """

    priority = 12

    def __init__(self, warn_threshold: float = 1e4):
        self.warn_threshold = float(warn_threshold)
        self._norms: list = []  # per step: the total gradient L2 norm (0-dim), on the device
        self._params: list = []  # the model's parameters, gathered once per epoch

    def on_train_epoch_begin(self, trainer, **kwargs):
        self._norms = []
        self._params = list(trainer.model.parameters())

    def on_before_optimizer_step(self, trainer, **kwargs):
        grads = [p.grad for p in self._params if p.grad is not None]
        if grads:  # a few small device ops per step; the epoch's max is read once, at epoch end
            # The total per step (not the per-parameter norms), since the set of parameters with
            # a gradient may change from step to step (a branch the forward pass skips).
            norm = torch.nn.utils.get_total_norm(grads)
            if trainer.scaler.is_enabled():  # the scaler skips a non-finite step: not a gradient the model took
                norm = torch.where(torch.isfinite(norm), norm, torch.zeros_like(norm))
            self._norms.append(norm)

    def on_epoch_end(self, trainer, *, epoch, **kwargs):
        if not self._norms:
            trainer._max_grad_norm = None
            return
        totals = torch.stack(self._norms)  # one L2 norm per step
        flagged = (totals > self.warn_threshold) | ~torch.isfinite(totals)
        max_norm, over = torch.stack([totals.max(), flagged.sum().to(totals.dtype)]).tolist()  # NaN propagates
        trainer._max_grad_norm = max_norm
        self._norms = []
        if over or not math.isfinite(max_norm):
            print(f"[tuneloop] epoch {epoch}: {int(over)} batch(es) with gradient norm above "
                  f"{self.warn_threshold:g} or non-finite (max {max_norm:.4g})", flush=True)
