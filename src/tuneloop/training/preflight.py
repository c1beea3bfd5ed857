"""The one-batch preflight of `tuneloop validate` (and of `tuneloop sweep`, before Ray starts).

Builds every part of the run with the steps of `build_run` (`tuneloop.training.build`) and runs
one batch: forward, loss, backward, an optimizer step, the metrics. Each mistake in the user's
data, model, criterion or optimizer is a UserError naming the key of `run` responsible, what must
hold and what was found (shapes, types). Nothing is written.
"""

from __future__ import annotations

import torch

from tuneloop.config.errors import UserError, Verbatim
from tuneloop.config.imports import resolve_run
from tuneloop.config.schema import ExperimentConfig
from tuneloop.training.build import (Step, build_criterion, build_data, build_loaders, build_model, build_optimizer,
                                     build_scheduler, build_user_callbacks, call, pick_device, seed_everything, shape)


def preflight(cfg: ExperimentConfig, *, device: str | None = None) -> dict:
    """Build the run's parts and run one training batch; report shapes, the loss and the sizes."""
    run, device = cfg.run, pick_device(device or cfg.run.device)
    resolved = resolve_run(run)
    seed_everything(run.seed)
    train_set, val_set = build_data(run, resolved)
    loaders = build_loaders(run, train_set, val_set, device)
    inputs, targets = first_batch(loaders.train, train_set, device)
    model = build_model(run, resolved, device)
    optimizer = build_optimizer(run, resolved, model)
    build_scheduler(run, resolved, optimizer)
    criterion = build_criterion(run, resolved)
    build_user_callbacks(run, resolved)

    model.train()
    with Step("run.net", f"the model's forward pass on inputs of {shape(inputs)}"):
        outputs = model(inputs)
    found = f"outputs of {shape(outputs)} and targets of {shape(targets)}"
    with Step("run.criterion", f"{run.criterion} on the model's {found}"):
        loss = criterion(outputs, targets)
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise UserError(f"{run.criterion} must return a scalar loss (one number per batch) on the model's {found}",
                        key="run.criterion", value=Verbatim(f"a loss of {shape(loss)}"))
    if not loss.requires_grad:
        raise UserError("the loss must depend on the model's parameters (requires_grad)", key="run.net",
                        value=Verbatim("a loss without a gradient"))
    with Step("run.net", "backward through the model from the loss"):
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
    with Step("run.optimizer", f"one step of {call(run.optimizer, 'model.parameters()', run.optimizer_config)}"):
        optimizer.step()
    metric_values = {}
    for name, fn in resolved["metrics"].items():
        with Step("run.metrics", f"the metric {name} on the model's {found}"), torch.no_grad():
            metric_values[name] = float(fn(outputs, targets))
    return {
        "device": str(device), "train_samples": loaders.train_samples, "val_samples": loaders.val_samples,
        "input_shape": tuple(inputs.shape), "target_shape": tuple(targets.shape),
        "output_shape": tuple(outputs.shape), "loss": float(loss.detach()), "metrics": metric_values,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def first_batch(loader, train_set, device: torch.device):
    """The first training batch of `loader` (over `train_set`), on `device`: a pair (inputs,
    targets) of one length."""
    with Step("run.data", f"taking the first training batch (from a {type(train_set).__name__})"):
        batch = next(iter(loader))
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise UserError("a training batch must be a pair (inputs, targets)", key="run.data",
                        value=Verbatim(f"a {type(batch).__name__}" + (f" of length {len(batch)}"
                                                                      if isinstance(batch, (tuple, list)) else "")))
    inputs, targets = (t.to(device) if isinstance(t, torch.Tensor) else t for t in batch)
    if isinstance(inputs, torch.Tensor) and isinstance(targets, torch.Tensor) and len(inputs) != len(targets):
        raise UserError("a batch must hold as many targets as inputs", key="run.data",
                        value=Verbatim(f"inputs of {shape(inputs)}, targets of {shape(targets)}"))
    return inputs, targets
