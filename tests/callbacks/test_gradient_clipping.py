"""GradientClippingCallback: the total norm is clipped before each step; the monitor sees the norm before."""

import math

import pytest
import torch

from tuneloop.callbacks import GradientClippingCallback, GradientMonitorCallback, TrainingCallback
from tuneloop.training.data import TensorBatches
from tuneloop.trainer import Trainer


class NormAfterClipping(TrainingCallback):
    priority = 30  # after the clipping (20)

    def __init__(self):
        self.norms = []

    def on_before_optimizer_step(self, trainer, **kwargs):
        grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
        self.norms.append(float(torch.nn.utils.get_total_norm(grads)))


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_every_step_is_clipped_and_the_monitor_reports_the_norm_before_clipping(precision):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    x, y = torch.randn(64, 5) * 30, torch.randint(0, 3, (64,))
    after = NormAfterClipping()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), None, torch.nn.CrossEntropyLoss(),
                      [GradientClippingCallback(0.05), GradientMonitorCallback(), after], precision=precision)
    trainer.train(TensorBatches(x, y, 8), TensorBatches(x, y, 64), epochs=2)
    assert len(after.norms) == 16
    taken = [n for n in after.norms if math.isfinite(n)]  # fp16: a step with inf gradients is skipped by the scaler
    assert len(taken) >= 12
    assert max(taken) <= 0.05 * (1 + 1e-4)  # in the gradients' own units (unscaled under fp16)
    assert trainer._max_grad_norm > 0.05 * 2  # the monitor saw the norm before clipping


def test_max_norm_must_be_positive():
    with pytest.raises(ValueError, match="max_norm > 0 must hold, but got max_norm=0"):
        GradientClippingCallback(0)
