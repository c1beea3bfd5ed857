"""`tuneloop train EXPERIMENT --seeds N`: the final runs of one configuration with N seeds.

Seeds `run.seed`, `run.seed + 1`, ... each train in their own directory `<run_dir>/seed_<S>/`
(what `tuneloop train` writes for one run), as Ray tasks with the sweep's `resources_per_trial`,
so as many run at once as the machine (or cluster) has room for. Then `seeds.csv` and
`seeds.json` in `<run_dir>` hold the per-seed values and the mean ± std (sample standard
deviation, n - 1) of the final and the best val_loss.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
import time
from pathlib import Path

from tuneloop._io import atomic_write_text
from tuneloop.config.schema import ExperimentConfig

FIELDS = ("seed", "final_val_loss", "best_val_loss", "best_epoch", "epochs_trained", "stop_reason", "device",
          "started_at", "ended_at", "run_dir")


def train_seed(cfg_json: dict, *, run_dir: str, device: str | None) -> dict:
    """One seed's run inside its Ray task: on the task's GPU when Ray gave it one."""
    import torch

    from tuneloop.training import run
    from tuneloop.tune.trial import trial_device

    cfg = ExperimentConfig.model_validate(cfg_json)
    cpus = max(1, int(cfg.sweep.resources_per_trial.cpu))
    torch.set_num_threads(cpus)
    device = device or str(trial_device())
    started = time.time()
    result = run.train(cfg, run_dir=Path(run_dir), device=device, progress=False,
                       wandb_group=Path(run_dir).parent.name)
    return {"seed": cfg.run.seed, "final_val_loss": result.final_val_loss, "best_val_loss": result.best_val_loss,
            "best_epoch": result.best_epoch, "epochs_trained": result.epochs_trained,
            "stop_reason": result.stop_reason or "", "device": device, "started_at": started,
            "ended_at": time.time(), "run_dir": str(run_dir), "pid": os.getpid()}


def train_seeds(cfg: ExperimentConfig, *, run_dir: Path, seeds: int, device: str | None = None,
                address: str | None = None) -> list[dict]:
    """Train `seeds` seeds as Ray tasks; print and write the per-seed values and mean ± std."""
    import ray

    from tuneloop.tune.session import ensure_ray

    resources = cfg.sweep.resources_per_trial
    task = ray.remote(train_seed).options(num_cpus=resources.cpu, num_gpus=resources.gpu, max_retries=0)
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"[tuneloop] training {cfg.run.name} with seeds {cfg.run.seed}..{cfg.run.seed + seeds - 1} as Ray tasks "
          f"({resources.cpu} CPU, {resources.gpu} GPU each) → {run_dir}", flush=True)
    started = ensure_ray(address)
    try:
        futures = []
        for seed in range(cfg.run.seed, cfg.run.seed + seeds):
            seeded = cfg.model_copy(deep=True)
            seeded.run.seed = seed
            futures.append(task.remote(seeded.model_dump(mode="json", by_alias=True),
                                       run_dir=str(run_dir / f"seed_{seed}"), device=device))
        results = ray.get(futures)
    finally:
        if started:
            ray.shutdown()
    summary = summarize(results)
    write(run_dir, results, summary)
    print_summary(results, summary)
    return results


def summarize(results: list[dict]) -> dict:
    """mean, std (n - 1; 0 for one seed) and n of the final and best val_loss over the finite ones."""
    out = {}
    for key in ("final_val_loss", "best_val_loss"):
        values = [r[key] for r in results if math.isfinite(r[key])]
        out[key] = {"mean": statistics.fmean(values) if values else math.nan,
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0 if values else math.nan,
                    "n": len(values)}
    return out


def write(run_dir: Path, results: list[dict], summary: dict) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(results)
    atomic_write_text(run_dir / "seeds.csv", buffer.getvalue())
    atomic_write_text(run_dir / "seeds.json", json.dumps({"seeds": results, "summary": summary}, indent=2) + "\n")


def print_summary(results: list[dict], summary: dict) -> None:
    print(f"{'seed':>6} {'final val_loss':>15} {'best val_loss':>14} {'best epoch':>10} {'epochs':>6}  stop")
    for r in sorted(results, key=lambda r: r["seed"]):
        print(f"{r['seed']:>6} {r['final_val_loss']:>15.6g} {r['best_val_loss']:>14.6g} {str(r['best_epoch']):>10} "
              f"{r['epochs_trained']:>6}  {r['stop_reason'] or '-'}")
    for key, label in (("final_val_loss", "final val_loss"), ("best_val_loss", "best val_loss")):
        s = summary[key]
        print(f"{label}: {s['mean']:.6g} ± {s['std']:.3g} (mean ± std over {s['n']} seeds)")
