"""One run of a RunConfig without Tune (`tuneloop train`), and the one-batch preflight (`tuneloop validate`)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from tuneloop.build import build_run, pick_device
from tuneloop.callbacks.metrics_csv import MetricsCsvCallback
from tuneloop.callbacks.progress import ProgressCallback
from tuneloop.checkpointing import atomic_write_text
from tuneloop.config import ExperimentConfig, dump_yaml
from tuneloop.errors import UserError, Verbatim


@dataclass
class TrainResult:
    run_dir: Path
    final_val_loss: float
    best_val_loss: float
    best_epoch: int | None
    epochs_trained: int
    stop_reason: str | None


def default_run_dir(cfg: ExperimentConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(cfg.sweep.storage_path) / cfg.run.name / f"train_{stamp}"


def train(cfg: ExperimentConfig, *, file: str, run_dir: Path, device: str | None = None,
          progress: bool = True, wandb_group: str | None = None) -> TrainResult:
    """Train `cfg.run` once: config.yaml, metrics.csv, checkpoints/ and summary.json under `run_dir`.
    `progress`: a line per epoch on stdout; `wandb_group`: the W&B run's group (seeds of one config)."""
    device = pick_device(device or cfg.run.device)
    csv_logger = MetricsCsvCallback(run_dir / "metrics.csv")
    wandb_init = {"name": run_dir.name, "dir": str(run_dir), **({"group": wandb_group} if wandb_group else {})}
    try:
        run = build_run(cfg.run, device=device, checkpoint_dir=run_dir / "checkpoints",
                        extra_callbacks=[csv_logger, *([ProgressCallback()] if progress else [])],
                        wandb_init=wandb_init)
    except UserError as error:
        raise error.at(file=file) from None
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg.model_dump(mode="json", by_alias=True)))
    print(f"[tuneloop] training {cfg.run.name} on {device} for {cfg.run.epochs} epochs → {run_dir}", flush=True)
    final = run.trainer.train(run.train_loader, run.val_loader, cfg.run.epochs)
    finite = [r for r in csv_logger.rows if math.isfinite(r["val_loss"])]
    best = min(finite, key=lambda r: r["val_loss"]) if finite else None
    result = TrainResult(run_dir, final, best["val_loss"] if best else math.inf,
                         best["epoch"] if best else None, len(csv_logger.rows), run.trainer.stop_reason)
    summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in result.__dict__.items()}
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    return result


class _Step:
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
                        value=Verbatim(f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__)) from None


def _shape(tensor) -> str:
    if isinstance(tensor, torch.Tensor):
        return f"shape {tuple(tensor.shape)} {str(tensor.dtype).removeprefix('torch.')}"
    return f"type {type(tensor).__name__}"


def _call(path: str, first: str, config: dict) -> str:
    """How tuneloop calls the user's code, e.g. `torch.optim.AdamW(params, lr=-1.0)`."""
    args = ([first] if first else []) + [f"{k}={v!r}" for k, v in config.items()]
    return f"{path}({', '.join(args)})"


def preflight(cfg: ExperimentConfig, *, file: str, device: str | None = None) -> dict:
    """Build data, model, optimizer, scheduler and criterion and run one batch forward, loss,
    backward and optimizer step (and the metrics); report shapes and the loss.

    Each mistake in the user's data, model, criterion or optimizer is a UserError naming the
    key of `run` responsible (`run.data`, `run.net_config`, `run.net`, `run.criterion`, ...),
    what must hold and what was found (shapes, types). Nothing is written.
    """
    device = pick_device(device or cfg.run.device)
    try:
        return _preflight(cfg.run, device)
    except UserError as error:
        raise error.at(file=file) from None


def _preflight(run, device: torch.device) -> dict:
    from tuneloop.build import seed_everything
    from tuneloop.data import make_loader
    from tuneloop.importing import resolve_run

    resolved = resolve_run(run)
    seed_everything(run.seed)
    with _Step("run.data", _call(run.data, "", run.data_config)):
        data = resolved["data"](**run.data_config)
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        found = f"a {type(data).__name__}" + (f" of length {len(data)}" if isinstance(data, (tuple, list)) else "")
        raise UserError(f"{run.data}() must return a pair (train, val) of datasets", key="run.data",
                        value=Verbatim(found))
    sizes, loaders = {}, {}
    for split, dataset, batch_size, shuffle in (("train", data[0], run.batch_size, True),
                                                ("val", data[1], run.val_batch_size, False)):
        with _Step("run.data", f"len() of the {split} split (a {type(dataset).__name__})"):
            sizes[split] = len(dataset)
        tensors = getattr(dataset, "tensors", None)
        if isinstance(dataset, TensorDataset) and len(tensors) == 2 and len(tensors[0]) != len(tensors[1]):
            raise UserError(f"the {split} split's inputs and targets must have the same length", key="run.data",
                            value=Verbatim(f"inputs of {_shape(tensors[0])}, targets of {_shape(tensors[1])}"))
        if sizes[split] == 0:
            raise UserError(f"the {split} split of {run.data}() must not be empty", key="run.data",
                            value=Verbatim("0 samples"))
        with _Step("run.data", f"batching the {split} split (a {type(dataset).__name__})"):
            loaders[split] = make_loader(dataset, batch_size, shuffle=shuffle, seed=run.seed, device=device)
    with _Step("run.data", f"taking the first training batch (from a {type(data[0]).__name__})"):
        batch = next(iter(loaders["train"]))
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise UserError("a training batch must be a pair (inputs, targets)", key="run.data",
                        value=Verbatim(f"a {type(batch).__name__}" + (f" of length {len(batch)}"
                                                                      if isinstance(batch, (tuple, list)) else "")))
    inputs, targets = (t.to(device) if isinstance(t, torch.Tensor) else t for t in batch)
    if isinstance(inputs, torch.Tensor) and isinstance(targets, torch.Tensor) and len(inputs) != len(targets):
        raise UserError("a batch must hold as many targets as inputs", key="run.data",
                        value=Verbatim(f"inputs of {_shape(inputs)}, targets of {_shape(targets)}"))
    with _Step("run.net_config", _call(run.net, "", run.net_config)):
        model = resolved["net"](**run.net_config)
    if not isinstance(model, torch.nn.Module):
        raise UserError(f"{run.net}(**run.net_config) must return a torch.nn.Module", key="run.net",
                        value=Verbatim(f"a {type(model).__name__}"))
    model = model.to(device)
    with _Step("run.optimizer_config", _call(run.optimizer, "model.parameters()", run.optimizer_config)):
        optimizer = resolved["optimizer"](model.parameters(), **run.optimizer_config)
    if run.scheduler:
        with _Step("run.scheduler_config", _call(run.scheduler, "optimizer", run.scheduler_config)):
            resolved["scheduler"](optimizer, **run.scheduler_config)
    with _Step("run.criterion_config", _call(run.criterion, "", run.criterion_config)):
        criterion = resolved["criterion"](**run.criterion_config)
    for index, (spec, cls) in enumerate(zip(run.callbacks, resolved["callbacks"])):
        with _Step(f"run.callbacks.{index}", _call(spec.class_, "", spec.kwargs)):
            cls(**spec.kwargs)
    model.train()
    with _Step("run.net", f"the model's forward pass on inputs of {_shape(inputs)}"):
        outputs = model(inputs)
    found = f"outputs of {_shape(outputs)} and targets of {_shape(targets)}"
    with _Step("run.criterion", f"{run.criterion} on the model's {found}"):
        loss = criterion(outputs, targets)
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise UserError(f"{run.criterion} must return a scalar loss (one number per batch) on the model's {found}",
                        key="run.criterion", value=Verbatim(f"a loss of {_shape(loss)}"))
    if not loss.requires_grad:
        raise UserError("the loss must depend on the model's parameters (requires_grad)", key="run.net",
                        value=Verbatim("a loss without a gradient"))
    with _Step("run.net", "backward through the model from the loss"):
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
    with _Step("run.optimizer", f"one step of {_call(run.optimizer, 'model.parameters()', run.optimizer_config)}"):
        optimizer.step()
    metric_values = {}
    for name, fn in resolved["metrics"].items():
        with _Step("run.metrics", f"the metric {name} on the model's {found}"), torch.no_grad():
            metric_values[name] = float(fn(outputs, targets))
    return {
        "device": str(device), "train_samples": sizes["train"], "val_samples": sizes["val"],
        "input_shape": tuple(inputs.shape), "target_shape": tuple(targets.shape),
        "output_shape": tuple(outputs.shape), "loss": float(loss.detach()), "metrics": metric_values,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
