"""GradientMonitorCallback: per-batch gradient L2 norm, epoch max in `trainer._max_grad_norm`."""

import math

import torch

from tuneloop.callbacks.base import TrainingCallback


class GradientMonitorCallback(TrainingCallback):
    """Tracks the largest gradient norm of each epoch on the device (no host sync per step).

    Batches whose norm exceeds `warn_threshold` are counted and reported in one line at epoch end;
    a NaN/inf norm propagates into the epoch max and is reported, never hidden.
    """

    priority = 12

    def __init__(self, warn_threshold: float = 1e4):
        self.warn_threshold = float(warn_threshold)
        self._max = None  # running max on the device
        self._over = None  # count of batches over the threshold (or non-finite), on the device

    def on_train_epoch_begin(self, trainer, **kwargs):
        self._max = None
        self._over = None

    def on_train_step_end(self, trainer, **kwargs):
        grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
        if not grads:
            return
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        over = (norm > self.warn_threshold) | ~torch.isfinite(norm)
        if self._max is None:
            self._max, self._over = norm, over.int()
        else:
            self._max = torch.maximum(self._max, norm)  # NaN propagates
            self._over = self._over + over

    def on_epoch_end(self, trainer, *, epoch, **kwargs):
        if self._max is None:
            trainer._max_grad_norm = None
            return
        max_norm, over = float(self._max), int(self._over)
        trainer._max_grad_norm = max_norm
        if over or not math.isfinite(max_norm):
            print(f"[tuneloop] epoch {epoch}: {over} batch(es) with gradient norm above "
                  f"{self.warn_threshold:g} or non-finite (max {max_norm:.4g})", flush=True)
