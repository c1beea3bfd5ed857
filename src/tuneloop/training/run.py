"""One run of a RunConfig without Tune (`tuneloop train`): progress, metrics.csv, checkpoints,
config.yaml and summary.json in its run directory.

`train(..., resume=True)` continues a run directory from its newest intact checkpoint
(`checkpoints/epoch_<N>/`), exactly as if the run had never stopped: model, optimizer, LR
schedule, callbacks (metrics.csv's rows among them) and RNG states come back, and the data
order is a function of (seed, epoch). Ctrl-C writes summary.json (stop reason "interrupted")
and raises `Interrupted`, whose `line` says how to continue.
"""

from __future__ import annotations

import json
import math
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tuneloop._io import atomic_write_text
from tuneloop.callbacks.metrics_csv import MetricsCsvCallback
from tuneloop.callbacks.progress import ProgressCallback
from tuneloop.checkpoints import CheckpointManager, DamagedCheckpoint, ended, load_state, restore_state
from tuneloop.config.errors import UserError
from tuneloop.config.schema import ExperimentConfig
from tuneloop.config.yaml12 import dump_yaml
from tuneloop.storage import METRICS_FILE
from tuneloop.training.build import build_run, pick_device, run_hash

CONFIG_FILE, SUMMARY_FILE, CHECKPOINTS_DIR = "config.yaml", "summary.json", "checkpoints"
INTERRUPTED = "interrupted"  # the stop reason in summary.json after Ctrl-C


@dataclass
class TrainResult:
    run_dir: Path
    final_val_loss: float
    best_val_loss: float
    best_epoch: int | None
    epochs_trained: int
    stop_reason: str | None


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during `train`, after summary.json was written; `line` says how to continue."""

    def __init__(self, line: str, result: TrainResult | None = None):
        super().__init__(line)  # (line,) as args: it pickles (out of a Ray task of `--seeds`)
        self.line, self.result = line, result


def default_run_dir(cfg: ExperimentConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(cfg.sweep.storage_path) / cfg.run.name / f"train_{stamp}"


def new_run_dir(cfg: ExperimentConfig, output: str | Path | None, *, key: str) -> Path:
    """`output` (else the default run directory), which must be new or empty: a UserError naming
    `key` (the flag or argument that gave it) otherwise."""
    run_dir = Path(output) if output is not None else default_run_dir(cfg)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise UserError("the run directory must be new or empty", key=key, value=str(run_dir))
    return run_dir


def train(cfg: ExperimentConfig, *, run_dir: Path, device: str | None = None,
          progress: bool = True, wandb_group: str | None = None, resume: bool = False) -> TrainResult:
    """Train `cfg.run` once: config.yaml, metrics.csv, checkpoints/ and summary.json under `run_dir`.
    `progress`: a line per epoch on stdout; `wandb_group`: the W&B run's group (seeds of one config);
    `resume`: continue `run_dir` (whose config.yaml `cfg` is) from its newest intact checkpoint.
    Raises `Interrupted` on Ctrl-C, once summary.json says so."""
    device = pick_device(device or cfg.run.device)
    epochs = cfg.run.epochs
    csv_logger = MetricsCsvCallback(run_dir / METRICS_FILE)
    wandb_init = {"name": run_dir.name, "dir": str(run_dir), **({"group": wandb_group} if wandb_group else {})}
    run = build_run(cfg.run, device=device, checkpoint_dir=run_dir / CHECKPOINTS_DIR,
                    extra_callbacks=[csv_logger, *([ProgressCallback()] if progress else [])],
                    wandb_init=wandb_init)
    start_epoch = 0
    if resume:
        found = latest_checkpoint(run_dir / CHECKPOINTS_DIR, run_hash(cfg.run), device)
        if found is None:
            print(f"[tuneloop] {run_dir} has no checkpoint yet: training {cfg.run.name} on {device} from epoch 1 "
                  f"of {epochs}", flush=True)
        else:
            state, path = found
            start_epoch = restore_state(run.trainer, state)
            if reason := ended(state, epochs):
                print(f"[tuneloop] {run_dir} had already ended after epoch {start_epoch}/{epochs} ({reason}): "
                      "nothing left to train", flush=True)
                final = state["val_loss"] if state["val_loss"] is not None else math.inf
                return _finish(run_dir, csv_logger.rows, final, None if reason == "complete" else reason)
            print(f"[tuneloop] continuing {cfg.run.name} on {device} after epoch {start_epoch}/{epochs} "
                  f"({path.relative_to(run_dir)}) → {run_dir}", flush=True)
    try:
        if not resume:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_dir / CONFIG_FILE, dump_yaml(cfg.model_dump(mode="json", by_alias=True)))
            print(f"[tuneloop] training {cfg.run.name} on {device} for {epochs} epochs → {run_dir}", flush=True)
        final = run.trainer.train(run.train_loader, run.val_loader, epochs, start_epoch)
    except KeyboardInterrupt:
        if not (run_dir / CONFIG_FILE).is_file():
            raise  # nothing to continue: the directory is empty
        last = csv_logger.rows[-1]["val_loss"] if csv_logger.rows else math.inf
        result = _finish(run_dir, csv_logger.rows, last, INTERRUPTED)
        raise Interrupted(interrupted_line(run_dir, len(csv_logger.rows), epochs), result) from None
    return _finish(run_dir, csv_logger.rows, final, run.trainer.stop_reason)


def _finish(run_dir: Path, rows: list[dict], final: float, stop_reason: str | None) -> TrainResult:
    """The result of the epochs in `rows`, written to summary.json (atomically)."""
    finite = [r for r in rows if math.isfinite(r["val_loss"])]
    best = min(finite, key=lambda r: r["val_loss"]) if finite else None
    result = TrainResult(run_dir, final, best["val_loss"] if best else math.inf,
                         best["epoch"] if best else None, len(rows), stop_reason)
    summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in result.__dict__.items()}
    atomic_write_text(run_dir / SUMMARY_FILE, json.dumps(summary, indent=2, default=str) + "\n")
    return result


def latest_checkpoint(root: Path, expected_hash: str, device: torch.device) -> tuple[dict, Path] | None:
    """The newest intact periodic checkpoint under `root` as (state, directory), or None when
    there is none. A damaged one (truncated, corrupt) is skipped for the one before it, with a
    line saying so; one of another experiment (config hash) raises CheckpointError."""
    for _, directory in reversed(CheckpointManager(root).periodic()):
        try:
            return load_state(directory, expected_hash, map_location=device), directory
        except DamagedCheckpoint as exc:
            detail = " ".join(str(exc).split())
            print(f"[tuneloop] skipping a damaged checkpoint: {detail}", flush=True)
    return None


def interrupted_line(run_dir: Path, finished: int, epochs: int) -> str:
    """What to print after Ctrl-C: how far the run got, where a resume starts, the command."""
    latest = CheckpointManager(run_dir / CHECKPOINTS_DIR).periodic()
    saved = latest[-1][0] + 1 if latest else 0  # epochs that a resume does not train again
    done = f"after epoch {finished}/{epochs}" if finished else f"in epoch 1/{epochs}"
    if saved < finished:
        done += f" (last checkpoint after epoch {saved}/{epochs})" if saved else " (no checkpoint yet)"
    return f"[tuneloop] interrupted {done}; continue with: tuneloop train --resume {shlex.quote(str(run_dir))}"
