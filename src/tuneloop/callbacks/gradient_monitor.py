"""GradientMonitorCallback: per-step gradient L2 norm, epoch max in `trainer._max_grad_norm`."""

import math

import torch

from tuneloop.callbacks.base import TrainingCallback

PENDING_LIMIT = 1024  # per-parameter norms held before they are reduced to per-step totals


class GradientMonitorCallback(TrainingCallback):
    """Tracks the largest gradient norm of each epoch on the device (no host sync per step).

    The norm is taken before each optimizer step (before any clipping, after fp16 unscaling).
    Steps whose norm exceeds `warn_threshold` are counted and reported in one line at epoch end;
    a NaN/inf norm propagates into the epoch max and is reported, never hidden, except under fp16
    loss scaling, where a non-finite gradient makes the scaler skip that step (it is left out).

    Under DDP: on every rank, after DDP's all-reduce, so every rank measures the same averaged gradients.
    """

    priority = 12

    def __init__(self, warn_threshold: float = 1e4):
        self.warn_threshold = float(warn_threshold)
        self._params: list = []  # the model's parameters, gathered once per epoch
        self._on_cpu = True  # all of them on the CPU: a norm per parameter, else torch's total norm
        self._pending: list = []  # per step not yet reduced: its L2 norms (0-dim, on the device)
        self._held = 0  # how many norms `_pending` holds
        self._totals: list = []  # 1-dim tensors of per-step total L2 norms, on the device
        self._skips_non_finite = False  # fp16 loss scaling: a non-finite step is skipped, not taken

    def on_train_epoch_begin(self, trainer, **kwargs):
        self._pending, self._held, self._totals = [], 0, []
        self._params = list(trainer.model.parameters())
        self._on_cpu = all(p.device.type == "cpu" for p in self._params)
        self._skips_non_finite = trainer.scaler.is_enabled()

    def on_before_optimizer_step(self, trainer, **kwargs):
        # Per step only the norms, no host sync. On the CPU one per parameter: torch's total norm
        # computes the same ones, then groups, stacks and takes a second norm, 3x the time for a
        # small model. Elsewhere torch's total norm (fused kernels, gathered on one device). The
        # totals of many steps are taken together (one stack, one norm), the epoch's max and count
        # read at its end. The grads are listed per step: the set of parameters with a gradient may
        # change from step to step (a branch the forward pass skips).
        grads = [p.grad for p in self._params if p.grad is not None]
        if not grads:
            return
        if self._on_cpu:
            norms = [torch.linalg.vector_norm(grad) for grad in grads]
        else:
            norms = (torch.nn.utils.get_total_norm(grads),)
        self._pending.append(norms)
        self._held += len(norms)
        if self._held >= PENDING_LIMIT:
            self._reduce()

    def _reduce(self) -> None:
        """Turn the pending steps into one tensor of per-step total L2 norms (device ops only)."""
        pending, self._pending, self._held = self._pending, [], 0
        if not pending:
            return
        width = len(pending[0])
        if all(len(norms) == width for norms in pending):  # the usual case: one stack, one norm
            stacked = torch.stack([norm for norms in pending for norm in norms]).view(len(pending), width)
            totals = torch.linalg.vector_norm(stacked, dim=1)
        else:
            totals = torch.stack([torch.linalg.vector_norm(torch.stack(norms)) for norms in pending])
        if self._skips_non_finite:  # the scaler skips a non-finite step: not a gradient the model took
            totals = torch.where(torch.isfinite(totals), totals, torch.zeros_like(totals))
        self._totals.append(totals)

    def step_norms(self) -> torch.Tensor | None:
        """The total gradient L2 norm of each optimizer step of this epoch so far, on the device
        (no host sync), or None before the first."""
        self._reduce()
        if not self._totals:
            return None
        if len(self._totals) > 1:
            self._totals = [torch.cat(self._totals)]
        return self._totals[0]

    def on_epoch_end(self, trainer, *, epoch, **kwargs):
        totals = self.step_norms()
        self._totals = []
        if totals is None:
            trainer._max_grad_norm = None
            return
        # One read per epoch, a float per step (few next to the steps themselves), then plain Python.
        norms = totals.tolist()
        max_norm = math.nan if any(norm != norm for norm in norms) else max(norms)  # NaN propagates
        over = sum(1 for norm in norms if not norm <= self.warn_threshold)  # NaN and inf count as over
        trainer._max_grad_norm = max_norm
        if over or not math.isfinite(max_norm):
            print(f"[tuneloop] epoch {epoch}: {over} batch(es) with gradient norm above "
                  f"{self.warn_threshold:g} or non-finite (max {max_norm:.4g})", flush=True)
