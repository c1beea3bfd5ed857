"""Built-in validation metrics: `fn(outputs, targets) -> 0-dim tensor`, the batch mean, on the device.

`run.metrics` names one of these (`accuracy`) or gives an import path to a function of the same form.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the functions only call tensor methods: importing this module does not import torch
    import torch


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Share of samples whose arg-max class equals the target class."""
    return (outputs.argmax(dim=-1) == targets).float().mean()


def mae(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean absolute error."""
    return (outputs.reshape(targets.shape) - targets).abs().mean()


BUILTIN = {"accuracy": accuracy, "mae": mae}
