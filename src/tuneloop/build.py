"""Build the parts of one run from a RunConfig: seeds, data loaders, model, optimizer, scheduler,
criterion, metrics and the callback list (the nine built-ins as configured, then the user's)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuneloop.callbacks import (CheckpointCallback, EarlyStoppingCallback, GradientMonitorCallback,
                                LossPredictionCallback, NaNDetectionCallback, OptimizerModeCallback,
                                OverfitDetectionCallback, TrainingCallback, WandbLoggingCallback)
from tuneloop.checkpointing import config_hash
from tuneloop.config import RunConfig
from tuneloop.importing import resolve_run
from tuneloop.data import make_loader
from tuneloop.trainer import Trainer


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


@dataclass
class Run:
    """Everything one training run needs, built from a RunConfig."""

    trainer: Trainer
    train_loader: Any
    val_loader: Any
    config: RunConfig


def build_callbacks(run: RunConfig, resolved: dict, *, checkpoint_dir: Path | None, staging: bool = False,
                    wandb_init: dict | None = None) -> list[TrainingCallback]:
    """The built-ins that `run` enables, then the user's callbacks (the runner sorts by priority).

    The CheckpointCallback is added when `checkpoint_dir` is given. With `staging` (inside a
    trial) the directory only stages each checkpoint for Tune to copy into its storage, which keeps
    the history: only the latest is kept, no `best/`, and files are not flushed to disk (fsync).
    """
    callbacks: list[TrainingCallback] = [
        NaNDetectionCallback(),
        OptimizerModeCallback(),
        LossPredictionCallback(run.epochs),
    ]
    if run.gradient_monitor_config.enabled:
        callbacks.append(GradientMonitorCallback(run.gradient_monitor_config.warn_threshold))
    if run.overfit_config.enabled:
        callbacks.append(OverfitDetectionCallback(run.overfit_config.warmup_epochs, run.overfit_config.window_size))
    if run.early_stopping_config.enabled:
        es = run.early_stopping_config
        callbacks.append(EarlyStoppingCallback(es.patience, es.mode, es.min_delta, es.monitor))
    if run.checkpoint_config.enabled and checkpoint_dir is not None:
        ck = run.checkpoint_config
        callbacks.append(CheckpointCallback(checkpoint_dir, ck.save_every_n_epochs, 1 if staging else ck.keep_last_k,
                                            ck.monitor, ck.mode, run_hash(run), keep_best=not staging,
                                            durable=not staging))
    if run.wandb_config.enabled:
        wb = run.wandb_config
        init = dict(wandb_init or {})
        tags = [*wb.tags, *init.pop("tags", [])]  # the user's, then the sweep's (scheduler, sampler)
        callbacks.append(WandbLoggingCallback(**{
            "project": wb.project, "entity": wb.entity, "mode": wb.mode, "tags": tags or None,
            "config": run.model_dump(mode="json"), **init}))
    for spec, cls in zip(run.callbacks, resolved["callbacks"]):
        callbacks.append(cls(**spec.kwargs))
    return callbacks


def run_hash(run: RunConfig) -> str:
    """Hash of what makes checkpoints of this run interchangeable: the data and the model."""
    return config_hash({"data": run.data, "data_config": run.data_config, "net": run.net,
                        "net_config": run.net_config})


def build_run(run: RunConfig, *, device: torch.device, checkpoint_dir: Path | None = None,
              staging: bool = False, extra_callbacks: list[TrainingCallback] = (),
              wandb_init: dict | None = None) -> Run:
    """Seed, then build data, model, optimizer, scheduler, criterion, metrics and the Trainer.

    Raises UserError (without a file name) when an import path or keyword argument is wrong.
    """
    resolved = resolve_run(run)
    seed_everything(run.seed)
    train_set, val_set = resolved["data"](**run.data_config)
    train_loader = make_loader(train_set, run.batch_size, shuffle=True, seed=run.seed, device=device)
    val_loader = make_loader(val_set, run.val_batch_size, shuffle=False, seed=run.seed, device=device)
    model = resolved["net"](**run.net_config).to(device)
    optimizer = resolved["optimizer"](model.parameters(), **run.optimizer_config)
    scheduler = resolved["scheduler"](optimizer, **run.scheduler_config) if run.scheduler else None
    criterion = resolved["criterion"](**run.criterion_config)
    callbacks = build_callbacks(run, resolved, checkpoint_dir=checkpoint_dir, staging=staging,
                                wandb_init=wandb_init) + list(extra_callbacks)
    trainer = Trainer(model, optimizer, scheduler, criterion, callbacks, device=device,
                      metrics=resolved["metrics"])
    return Run(trainer, train_loader, val_loader, run)
