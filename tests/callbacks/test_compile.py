"""CompileCallback: the model is compiled in place, so checkpoints keep the module's own keys."""

import torch

from tuneloop.callbacks import CompileCallback
from tuneloop.checkpoints import collect_state, restore_state
from tuneloop.training.data import TensorBatches
from tuneloop.trainer import Trainer


def trainer(callbacks=()):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    return Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), None, torch.nn.CrossEntropyLoss(), callbacks)


def loaders():
    x, y = torch.randn(48, 5), torch.randint(0, 3, (48,))
    return TensorBatches(x, y, 16, shuffle=True), TensorBatches(x, y, 48)


def test_a_compiled_and_an_uncompiled_run_load_each_others_checkpoints(capsys):
    # backend "eager": Dynamo's capture without Inductor's code generation (seconds, not a minute, on a CPU)
    compiled, plain = trainer([CompileCallback(backend="eager")]), trainer()
    torch.manual_seed(1)
    compiled.train(*loaders(), epochs=2)
    torch.manual_seed(1)
    plain.train(*loaders(), epochs=2)
    assert compiled.model._compiled_call_impl is not None and plain.model._compiled_call_impl is None
    state = collect_state(compiled, epoch=1)
    assert list(state["model"]) == list(plain.model.state_dict())  # no _orig_mod. prefix
    for a, b in zip(compiled.model.parameters(), plain.model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    restore_state(plain, state)
    restore_state(compiled, collect_state(plain, epoch=1))
    out = capsys.readouterr().out
    assert out.count("torch.compile") == 1 and "the first step, with compilation, took" in out


def test_the_model_is_compiled_once_across_train_calls():
    callback = CompileCallback(backend="eager")
    t = trainer([callback])
    t.train(*loaders(), epochs=1)
    t.train(*loaders(), epochs=1)
    assert len(callback._compiled) == 1
