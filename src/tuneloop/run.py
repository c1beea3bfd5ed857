"""One run of a RunConfig without Tune (`tuneloop train`), and the one-batch preflight (`tuneloop validate`)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tuneloop.build import build_run, pick_device
from tuneloop.callbacks.metrics_csv import MetricsCsvCallback
from tuneloop.callbacks.progress import ProgressCallback
from tuneloop.checkpointing import atomic_write_text
from tuneloop.config import ExperimentConfig, dump_yaml
from tuneloop.errors import UserError


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


def train(cfg: ExperimentConfig, *, file: str, run_dir: Path, device: str | None = None) -> TrainResult:
    """Train `cfg.run` once: config.yaml, metrics.csv, checkpoints/ and summary.json under `run_dir`."""
    device = pick_device(device or cfg.run.device)
    csv_logger = MetricsCsvCallback(run_dir / "metrics.csv")
    try:
        run = build_run(cfg.run, device=device, checkpoint_dir=run_dir / "checkpoints",
                        extra_callbacks=[csv_logger, ProgressCallback()],
                        wandb_init={"name": run_dir.name, "dir": str(run_dir)})
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


PREFLIGHT_STAGES = {  # key path → what the preflight was doing there
    "run": "building data, model, optimizer, scheduler and criterion",
    "run.data": "taking the first training batch",
    "run.net": "the model's forward pass on one batch",
    "run.criterion": "the criterion on the model's output and the targets",
    "run.optimizer": "backward and one optimizer step",
    "run.metrics": "a validation metric on one batch",
}


def preflight(cfg: ExperimentConfig, *, file: str, device: str | None = None) -> dict:
    """Build everything and run one batch forward/backward/step; report shapes and the loss.

    A failure in the user's data, model, criterion or optimizer is a UserError naming the part.
    """
    device = pick_device(device or cfg.run.device)
    stage = "run"
    try:
        run = build_run(cfg.run, device=device)
        trainer = run.trainer
        sizes = {}
        for split, loader in (("train", run.train_loader), ("val", run.val_loader)):
            sizes[split] = len(loader.targets) if hasattr(loader, "targets") else len(loader.dataset)
            if sizes[split] == 0:
                raise UserError(f"the {split} split is empty", file=file, key="run.data", value=cfg.run.data)
        stage = "run.data"
        inputs, targets = next(iter(run.train_loader))
        inputs, targets = inputs.to(device), targets.to(device)
        stage = "run.net"
        trainer.model.train()
        outputs = trainer.model(inputs)
        stage = "run.criterion"
        loss = trainer.criterion(outputs, targets)
        if loss.dim() != 0:
            raise UserError("the criterion must return a scalar loss", file=file, key="run.criterion",
                            value=f"a tensor of shape {tuple(loss.shape)}")
        stage = "run.optimizer"
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.optimizer.step()
        stage = "run.metrics"
        with torch.no_grad():
            metric_values = {name: float(fn(outputs, targets)) for name, fn in trainer.metrics.items()}
    except UserError as error:
        raise error.at(file=file) from None
    except Exception as exc:
        raise UserError(f"{PREFLIGHT_STAGES[stage]} raised {type(exc).__name__}: {exc}",
                        file=file, key=stage) from None
    return {
        "device": str(device), "train_samples": sizes["train"], "val_samples": sizes["val"],
        "input_shape": tuple(inputs.shape), "target_shape": tuple(targets.shape),
        "output_shape": tuple(outputs.shape), "loss": float(loss.detach()), "metrics": metric_values,
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
    }
