"""The one-batch preflight of `tuneloop validate`, `tuneloop train` and `tuneloop sweep` (before
Ray starts).

Builds every part of the run with the steps of `build_run` (`tuneloop.training.build`), the
Trainer included, and runs one batch through it: `compute_loss`, backward, an optimizer step, the
metrics. Each mistake in the user's data, model, criterion, trainer or optimizer is a UserError
naming the key of `run` responsible, what must hold and what was found (shapes, types, a dict's
keys). Nothing is written.
"""

from __future__ import annotations

import torch

from tuneloop.batches import describe, sample_count, tensors
from tuneloop.config.errors import UserError, Verbatim
from tuneloop.config.imports import resolve_run
from tuneloop.config.schema import ExperimentConfig
from tuneloop.trainer import Trainer
from tuneloop.training.build import (Step, build_criterion, build_data, build_loaders, build_model, build_optimizer,
                                     build_scheduler, build_trainer, build_user_callbacks, call, pick_device,
                                     seed_everything)


def preflight(cfg: ExperimentConfig, *, device: str | None = None) -> dict:
    """Build the run's parts and run one training batch; report shapes, the loss and the sizes."""
    run, device = cfg.run, pick_device(device or cfg.run.device)
    resolved = resolve_run(run)
    seed_everything(run.seed)
    train_set, val_set = build_data(run, resolved)
    loaders = build_loaders(run, train_set, val_set, device, resolved)
    model = build_model(run, resolved, device)
    optimizer = build_optimizer(run, resolved, model)
    build_scheduler(run, resolved, optimizer)
    criterion = build_criterion(run, resolved)
    build_user_callbacks(run, resolved)
    trainer = build_trainer(run, resolved, model, optimizer, None, criterion, [], device)
    batch = first_batch(loaders.train, train_set, trainer)

    model.train()
    with trainer.autocast():
        loss, outputs, targets = one_step(trainer, run, batch)
    found = f"outputs of {describe(outputs)} and targets of {describe(targets)}"
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        source = run.criterion if custom_step(trainer) is None else f"{run.trainer}.compute_loss"
        raise UserError(f"{source} must return a scalar loss (one number per batch) on the model's {found}",
                        key="run.criterion" if custom_step(trainer) is None else "run.trainer",
                        value=Verbatim(f"a loss of {describe(loss)}"))
    if not loss.requires_grad:
        raise UserError("the loss must depend on the model's parameters (requires_grad)", key="run.net",
                        value=Verbatim("a loss without a gradient"))
    with Step("run.net", "backward through the model from the loss"):
        optimizer.zero_grad(set_to_none=True)
        trainer.scaler.scale(loss).backward()
    with Step("run.optimizer", f"one step of {call(run.optimizer, 'model.parameters()', run.optimizer_config)}"):
        trainer.optimizer_step()
    metric_values = {}
    if outputs is not None and targets is not None:
        for name, fn in resolved["metrics"].items():
            with Step("run.metrics", f"the metric {name} on the model's {found}"), torch.no_grad():
                metric_values[name] = float(fn(outputs, targets))
    inputs = batch[0] if custom_step(trainer) is None else batch
    return {
        "device": str(device), "train_samples": loaders.train_samples, "val_samples": loaders.val_samples,
        "batch": describe(batch), "input_shape": describe(inputs), "target_shape": describe(targets),
        "output_shape": describe(outputs), "loss": float(loss.detach()), "metrics": metric_values,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def custom_step(trainer: Trainer) -> str | None:
    """The name of the trainer class whose own compute_loss makes each step, or None (the default)."""
    cls = type(trainer)
    return None if cls.compute_loss is Trainer.compute_loss else cls.__name__


def one_step(trainer: Trainer, run, batch):
    """`trainer.compute_loss(batch)`, each part of it inside the Step that names its key: the
    default step as forward (run.net) and criterion (run.criterion), a custom one as a whole."""
    if custom_step(trainer) is not None:
        with Step("run.trainer", f"{run.trainer}.compute_loss on a batch of {describe(batch)}"):
            result = trainer.compute_loss(batch)
        if not (isinstance(result, tuple) and len(result) == 3):
            length = f" of length {len(result)}" if isinstance(result, (tuple, list)) else ""
            raise UserError(f"{run.trainer}.compute_loss must return a tuple (loss, outputs, targets)",
                            key="run.trainer", value=Verbatim(f"a {type(result).__name__}{length}"))
        return result
    inputs, targets = batch
    with Step("run.net", f"the model's forward pass on inputs of {describe(inputs)}"):
        outputs = trainer.model(inputs)
    with Step("run.criterion", f"{run.criterion} on the model's outputs of {describe(outputs)} and targets of "
                               f"{describe(targets)}"):
        loss = trainer.criterion(outputs, targets)
    return loss, outputs, targets


def first_batch(loader, train_set, trainer: Trainer):
    """The first training batch of `loader` (over `train_set`), on the trainer's device: for the
    default step a pair (inputs, targets) of one length; for a custom step any batch holding a tensor."""
    with Step("run.data", f"taking the first training batch (from a {type(train_set).__name__})"):
        batch = trainer.to_device(next(iter(loader)))
    if custom_step(trainer) is not None:
        if not tensors(batch):
            raise UserError("a training batch must hold at least one tensor", key="run.data",
                            value=Verbatim(describe(batch)))
        return batch
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        length = f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""
        raise UserError("a training batch must be a pair (inputs, targets) for the default Trainer.compute_loss "
                        "(for other batches, set run.trainer to a Trainer subclass that overrides compute_loss)",
                        key="run.data", value=Verbatim(f"a {type(batch).__name__}{length}: {describe(batch)}"))
    inputs, targets = batch
    if isinstance(inputs, torch.Tensor) and isinstance(targets, torch.Tensor) and len(inputs) != len(targets):
        raise UserError("a batch must hold as many targets as inputs", key="run.data",
                        value=Verbatim(f"inputs of {describe(inputs)}, targets of {describe(targets)}"))
    sample_count(batch, targets)
    return batch
