"""Build the parts of one run from a RunConfig: seeds, data loaders, model, optimizer, scheduler,
criterion, metrics and the callback list (the built-ins as configured, then the user's).

One construction path: `build_run` (a trial, `tuneloop train`) and the preflight of `tuneloop
validate` (`tuneloop.training.preflight`) make every part with the same step functions. Each step
runs the user's code inside a `Step`, so a failure is a UserError naming the key of `run`
responsible (`run.data`, `run.net_config`, ...), what ran and what it raised.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, TensorDataset

from tuneloop.batches import describe
from tuneloop.callbacks import (CheckpointCallback, CompileCallback, EarlyStoppingCallback, GradientClippingCallback,
                                GradientMonitorCallback, LossPredictionCallback, NaNDetectionCallback,
                                OptimizerModeCallback, OverfitDetectionCallback, StopAgreementCallback,
                                TrainingCallback, WandbLoggingCallback)
from tuneloop.config.errors import UserError, Verbatim
from tuneloop.config.imports import resolve_run
from tuneloop.config.schema import RunConfig
from tuneloop.trainer import Trainer
from tuneloop.checkpoints import config_hash
from tuneloop.ranks import data_parallel, process_group
from tuneloop.training.data import make_loader


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(requested: str) -> torch.device:
    """`auto` → cuda when available, else cpu; anything else as given."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


class Step:
    """Turns an exception raised by the user's code into a UserError naming `key`: "`doing` must not
    raise, but got TypeError: ..." (`doing` says what ran, on what: shapes, keyword arguments)."""

    def __init__(self, key: str, doing: str):
        self.key, self.doing = key, doing

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or isinstance(exc, UserError) or not isinstance(exc, Exception):
            return False
        detail = " ".join(str(exc).split())
        raise UserError(f"{self.doing} must not raise", key=self.key,
                        value=Verbatim(f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__)) from exc


def call(path: str, first: str, config: dict) -> str:
    """How tuneloop calls the user's code, e.g. `torch.optim.AdamW(params, lr=-1.0)`."""
    args = ([first] if first else []) + [f"{k}={v!r}" for k, v in config.items()]
    return f"{path}({', '.join(args)})"


# --- the steps, in the order a run is built ------------------------------------------------------

def build_data(run: RunConfig, resolved: dict) -> tuple[Any, Any]:
    """`run.data(**run.data_config)`: a pair (train, val) of datasets."""
    with Step("run.data", call(run.data, "", run.data_config)):
        data = resolved["data"](**run.data_config)
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        found = f"a {type(data).__name__}" + (f" of length {len(data)}" if isinstance(data, (tuple, list)) else "")
        raise UserError(f"{run.data}() must return a pair (train, val) of datasets", key="run.data",
                        value=Verbatim(found))
    return data[0], data[1]


@dataclass
class Loaders:
    train: Any
    val: Any
    train_samples: int | None  # None: an iterable dataset without a length
    val_samples: int | None


def build_loaders(run: RunConfig, train_set, val_set, device: torch.device, resolved: dict | None = None,
                  rank: int = 0, world_size: int = 1) -> Loaders:
    """Batches of each split (non-empty, inputs and targets of one length), seeded by `run.seed`,
    through `run.loader_config` and `run.collate_fn`; with `world_size` > 1, this rank's share of
    each split (`make_loader`)."""
    sizes, loaders = {}, {}
    collate_fn = (resolved or {}).get("collate_fn")
    options = run.loader_config.model_dump()
    for split, dataset, batch_size, shuffle in (("train", train_set, run.batch_size, True),
                                                ("val", val_set, run.val_batch_size, False)):
        if split == "val":  # validation sees every sample: drop_last is for training batches
            options = {**options, "drop_last": False}
        if isinstance(dataset, IterableDataset) and not hasattr(dataset, "__len__"):
            sizes[split] = None  # known only by iterating it
        else:
            with Step("run.data", f"len() of the {split} split (a {type(dataset).__name__})"):
                sizes[split] = len(dataset)
        tensors = getattr(dataset, "tensors", None)
        if isinstance(dataset, TensorDataset) and len(tensors) == 2 and len(tensors[0]) != len(tensors[1]):
            raise UserError(f"the {split} split's inputs and targets must have the same length", key="run.data",
                            value=Verbatim(f"inputs of {describe(tensors[0])}, targets of {describe(tensors[1])}"))
        if sizes[split] == 0:
            raise UserError(f"the {split} split of {run.data}() must not be empty", key="run.data",
                            value=Verbatim("0 samples"))
        with Step("run.data", f"batching the {split} split (a {type(dataset).__name__})"):
            loaders[split] = make_loader(dataset, batch_size, shuffle=shuffle, seed=run.seed, device=device,
                                         options=options, collate_fn=collate_fn, rank=rank,
                                         world_size=world_size, even=split == "train")
    return Loaders(loaders["train"], loaders["val"], sizes["train"], sizes["val"])


def build_model(run: RunConfig, resolved: dict, device: torch.device) -> torch.nn.Module:
    """`run.net(**run.net_config)` on `device`: a torch.nn.Module."""
    with Step("run.net_config", call(run.net, "", run.net_config)):
        model = resolved["net"](**run.net_config)
    if not isinstance(model, torch.nn.Module):
        raise UserError(f"{run.net}(**run.net_config) must return a torch.nn.Module", key="run.net",
                        value=Verbatim(f"a {type(model).__name__}"))
    return model.to(device)


def build_optimizer(run: RunConfig, resolved: dict, model: torch.nn.Module):
    """`run.optimizer(model.parameters(), **run.optimizer_config)`."""
    with Step("run.optimizer_config", call(run.optimizer, "model.parameters()", run.optimizer_config)):
        return resolved["optimizer"](model.parameters(), **run.optimizer_config)


def build_scheduler(run: RunConfig, resolved: dict, optimizer):
    """`run.scheduler(optimizer, **run.scheduler_config)`, or None without one."""
    if not run.scheduler:
        return None
    with Step("run.scheduler_config", call(run.scheduler, "optimizer", run.scheduler_config)):
        return resolved["scheduler"](optimizer, **run.scheduler_config)


def build_criterion(run: RunConfig, resolved: dict):
    """`run.criterion(**run.criterion_config)`, or None when run.criterion is null."""
    if run.criterion is None:
        return None
    with Step("run.criterion_config", call(run.criterion, "", run.criterion_config)):
        return resolved["criterion"](**run.criterion_config)


def trainer_class(run: RunConfig, resolved: dict) -> type[Trainer]:
    """`run.trainer`: Trainer or a subclass of it; a null criterion needs a subclass's compute_loss."""
    cls = resolved.get("trainer") or Trainer
    if not (isinstance(cls, type) and issubclass(cls, Trainer)):
        raise UserError("must name a subclass of tuneloop.trainer.Trainer", key="run.trainer",
                        value=Verbatim(f"{run.trainer} (a {type(cls).__name__})"))
    if run.criterion is None and cls.compute_loss is Trainer.compute_loss:
        raise UserError(f"must name a loss when the trainer ({run.trainer}) does not override compute_loss",
                        key="run.criterion", value=Verbatim("null"), choices=["torch.nn.CrossEntropyLoss", "torch.nn.MSELoss"])
    return cls


def build_trainer(run: RunConfig, resolved: dict, model, optimizer, scheduler, criterion,
                  callbacks: list[TrainingCallback], device: torch.device) -> Trainer:
    """`run.trainer(...)` with the run's precision and gradient accumulation."""
    with Step("run.trainer", f"{run.trainer}(model, optimizer, ...)"):
        return trainer_class(run, resolved)(model, optimizer, scheduler, criterion, callbacks, device=device,
                                            metrics=resolved["metrics"], precision=run.precision,
                                            accumulate_steps=run.accumulate_steps)


def build_user_callbacks(run: RunConfig, resolved: dict) -> list[TrainingCallback]:
    """The user's callbacks (`run.callbacks`), each `class(**kwargs)`."""
    callbacks = []
    for index, (spec, cls) in enumerate(zip(run.callbacks, resolved["callbacks"])):
        with Step(f"run.callbacks.{index}", call(spec.class_, "", spec.kwargs)):
            callbacks.append(cls(**spec.kwargs))
    return callbacks


def builtin_callbacks(run: RunConfig, *, checkpoint_dir: Path | None, staging: bool = False,
                      wandb_init: dict | None = None, rank: int = 0, world_size: int = 1) -> list[TrainingCallback]:
    """The built-ins that `run` enables.

    Under data parallelism (`world_size` > 1) every rank runs the diagnostics on the losses and
    metrics averaged over the ranks (so they agree), the StopAgreementCallback makes one stop for
    all, and only rank 0 writes: its CheckpointCallback and W&B run are the only ones.

    The CheckpointCallback is added when `checkpoint_dir` is given. With `staging` (inside a
    trial) the directory only stages each checkpoint for Tune to copy into its storage, which keeps
    the history: only the latest is kept, no `best/`, and files are not flushed to disk (fsync);
    it is written in the foreground (Tune copies it when the epoch is reported), unless the trial
    has the callback write straight into Tune's storage (`CheckpointCallback.publish_to`).
    """
    callbacks: list[TrainingCallback] = [
        NaNDetectionCallback(),
        OptimizerModeCallback(),
        LossPredictionCallback(run.epochs),
    ]
    if run.compile:
        callbacks.append(CompileCallback(None if run.compile is True else run.compile))
    if run.grad_clip_norm is not None:
        callbacks.append(GradientClippingCallback(run.grad_clip_norm))
    if run.gradient_monitor_config.enabled:
        callbacks.append(GradientMonitorCallback(run.gradient_monitor_config.warn_threshold))
    if run.overfit_config.enabled:
        callbacks.append(OverfitDetectionCallback(run.overfit_config.warmup_epochs, run.overfit_config.window_size))
    if run.early_stopping_config.enabled:
        es = run.early_stopping_config
        callbacks.append(EarlyStoppingCallback(es.patience, es.mode, es.min_delta, es.monitor))
    if world_size > 1:
        callbacks.append(StopAgreementCallback())
    if run.checkpoint_config.enabled and checkpoint_dir is not None and rank == 0:
        ck = run.checkpoint_config
        callbacks.append(CheckpointCallback(checkpoint_dir, ck.save_every_n_epochs, 1 if staging else ck.keep_last_k,
                                            ck.monitor, ck.mode, run_hash(run), keep_best=not staging,
                                            durable=not staging, background=not staging))
    if run.wandb_config.enabled and rank == 0:
        wb = run.wandb_config
        init = dict(wandb_init or {})
        tags = [*wb.tags, *init.pop("tags", [])]  # the user's, then the sweep's (scheduler, sampler)
        callbacks.append(WandbLoggingCallback(**{
            "project": wb.project, "entity": wb.entity, "mode": wb.mode, "tags": tags or None,
            "config": run.model_dump(mode="json"), **init}))
    return callbacks


def run_hash(run: RunConfig) -> str:
    """Hash of what makes checkpoints of this run interchangeable: the data and the model."""
    return config_hash({"data": run.data, "data_config": run.data_config, "net": run.net,
                        "net_config": run.net_config})


# --- a whole run ---------------------------------------------------------------------------------

@dataclass
class Run:
    """Everything one training run needs, built from a RunConfig."""

    trainer: Trainer
    train_loader: Any
    val_loader: Any
    config: RunConfig


def build_run(run: RunConfig, *, device: torch.device, checkpoint_dir: Path | None = None,
              staging: bool = False, extra_callbacks: list[TrainingCallback] = (),
              wandb_init: dict | None = None) -> Run:
    """Seed, then build data, model, optimizer, scheduler, criterion, metrics and the Trainer with
    the built-in callbacks, the user's, then `extra_callbacks` (the runner sorts by priority).
    When torch.distributed runs with several processes, each builds its rank's share of the data
    and the model wrapped in DDP (`tuneloop.ranks`), and the trainer knows its rank and world size.

    Raises UserError (without a file name) when an import path, a keyword argument or the user's
    code is wrong, naming the key responsible.
    """
    rank, world_size = process_group()  # (0, 1) unless torch.distributed runs (a trial on several workers)
    resolved = resolve_run(run)
    seed_everything(run.seed)  # the same seed on every rank: the same initial model, the same dropout stream
    loaders = build_loaders(run, *build_data(run, resolved), device, resolved, rank, world_size)
    model = build_model(run, resolved, device)
    if world_size > 1:
        model = data_parallel(model, device)
    optimizer = build_optimizer(run, resolved, model)
    scheduler = build_scheduler(run, resolved, optimizer)
    criterion = build_criterion(run, resolved)
    callbacks = [*builtin_callbacks(run, checkpoint_dir=checkpoint_dir, staging=staging, wandb_init=wandb_init,
                                    rank=rank, world_size=world_size),
                 *build_user_callbacks(run, resolved), *extra_callbacks]
    trainer = build_trainer(run, resolved, model, optimizer, scheduler, criterion, callbacks, device)
    trainer.rank, trainer.world_size = rank, world_size
    return Run(trainer, loaders.train, loaders.val, run)
