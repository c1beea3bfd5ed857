"""One run of a RunConfig without Tune (`tuneloop train`): progress, metrics.csv, checkpoints,
config.yaml and summary.json in its run directory."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from tuneloop._io import atomic_write_text
from tuneloop.callbacks.metrics_csv import MetricsCsvCallback
from tuneloop.callbacks.progress import ProgressCallback
from tuneloop.config.schema import ExperimentConfig
from tuneloop.config.yaml12 import dump_yaml
from tuneloop.storage import METRICS_FILE
from tuneloop.training.build import build_run, pick_device


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


def train(cfg: ExperimentConfig, *, run_dir: Path, device: str | None = None,
          progress: bool = True, wandb_group: str | None = None) -> TrainResult:
    """Train `cfg.run` once: config.yaml, metrics.csv, checkpoints/ and summary.json under `run_dir`.
    `progress`: a line per epoch on stdout; `wandb_group`: the W&B run's group (seeds of one config)."""
    device = pick_device(device or cfg.run.device)
    csv_logger = MetricsCsvCallback(run_dir / METRICS_FILE)
    wandb_init = {"name": run_dir.name, "dir": str(run_dir), **({"group": wandb_group} if wandb_group else {})}
    run = build_run(cfg.run, device=device, checkpoint_dir=run_dir / "checkpoints",
                    extra_callbacks=[csv_logger, *([ProgressCallback()] if progress else [])],
                    wandb_init=wandb_init)
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
