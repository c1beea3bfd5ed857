import pytest
import schedulefree
import torch
from pytorch_optimizer import SPlus

from tuneloop.callbacks import OptimizerModeCallback, TrainingCallback
from tuneloop.data import TensorBatches
from tuneloop.trainer import Trainer


def flat(model):
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


class EvalWeights(TrainingCallback):
    """Records the weights seen during validation (priority 50: after OptimizerMode's switch)."""

    priority = 50

    def __init__(self):
        self.at_val = []

    def on_val_begin(self, trainer, **kwargs):
        self.at_val.append(flat(trainer.model))


@pytest.mark.parametrize("make_optimizer", [
    lambda params: SPlus(params, lr=0.05),
    lambda params: schedulefree.AdamWScheduleFree(params, lr=0.05),
], ids=["SPlus", "AdamWScheduleFree"])
def test_validation_uses_eval_mode_weights(make_optimizer):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    optimizer = make_optimizer(model.parameters())
    recorder = EvalWeights()
    trainer = Trainer(model, optimizer, None, torch.nn.CrossEntropyLoss(), [OptimizerModeCallback(), recorder])
    x, y = torch.randn(96, 6), torch.randint(0, 3, (96,))
    trainer.train(TensorBatches(x, y, 16, shuffle=True), TensorBatches(x, y, 96), epochs=2)
    # after training the optimizer is in eval mode: its weights are those validation saw
    eval_weights = flat(model)
    assert torch.equal(recorder.at_val[-1], eval_weights)
    optimizer.train()
    train_weights = flat(model)
    assert not torch.allclose(train_weights, eval_weights)  # the modes really differ
    optimizer.eval()
    assert torch.allclose(flat(model), eval_weights, atol=1e-6)  # back to eval (up to rounding)


def test_validation_without_the_callback_sees_train_mode_weights():
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    optimizer = schedulefree.AdamWScheduleFree(model.parameters(), lr=0.05)
    optimizer.train()
    recorder = EvalWeights()
    trainer = Trainer(model, optimizer, None, torch.nn.CrossEntropyLoss(), [recorder])
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    trainer.train(TensorBatches(x, y, 8), TensorBatches(x, y, 32), epochs=1)
    optimizer.eval()
    assert not torch.allclose(recorder.at_val[-1], flat(model))


def test_plain_optimizer_is_a_no_op():
    model = torch.nn.Linear(2, 2)
    trainer = Trainer(model, torch.optim.AdamW(model.parameters()), None, torch.nn.MSELoss(), [])
    callback = OptimizerModeCallback()
    callback.on_train_epoch_begin(trainer, epoch=0)
    callback.on_val_begin(trainer, epoch=0)
    assert model.training  # the model's own train()/eval() were not touched


def test_an_optimizer_that_is_the_model_is_not_called():
    calls = []

    class ModelAsOptimizer(torch.nn.Linear):
        def train(self, mode=True):
            calls.append(mode)
            return super().train(mode)

    model = ModelAsOptimizer(2, 2)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), None, torch.nn.MSELoss(), [])
    trainer.optimizer = model
    calls.clear()
    OptimizerModeCallback().on_train_epoch_begin(trainer, epoch=0)
    OptimizerModeCallback().on_val_begin(trainer, epoch=0)
    assert calls == []
