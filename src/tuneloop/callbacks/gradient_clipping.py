"""GradientClippingCallback: clip the gradients' total L2 norm before each optimizer step."""

import torch

from tuneloop.callbacks.base import TrainingCallback


class GradientClippingCallback(TrainingCallback):
    """`clip_grad_norm_(parameters, max_norm)` before each optimizer step (`run.grad_clip_norm`).

    Runs after the GradientMonitorCallback (12), which so reports the norm before clipping, and
    after the fp16 unscaling, so `max_norm` is in the gradients' own units. No host sync.

    Under DDP: on every rank, on the already averaged gradients (the same clipping on each).
    """

    priority = 20

    def __init__(self, max_norm: float):
        if not max_norm > 0:
            raise ValueError(f"max_norm > 0 must hold, but got max_norm={max_norm}")
        self.max_norm = float(max_norm)

    def on_before_optimizer_step(self, trainer, **kwargs):
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), self.max_norm)
