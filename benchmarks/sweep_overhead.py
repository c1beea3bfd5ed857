"""Sweep overhead: the same digits-MLP configurations (a) sequentially in-process with plain
Optuna calling our Trainer, (b) with `tuneloop sweep` on the local CPUs (fifo scheduler).

Prints wall times, the ratio b/a, and the sweep's efficiency: the sum of per-trial training
time / (parallel slots × wall time). Run: `.venv/bin/python benchmarks/sweep_overhead.py`
(`--trials 16 --epochs 30`; Ray start-up is included in (b)).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def experiment(args, storage: str):
    from tuneloop.config import load_experiment

    overrides = [f"sweep.num_samples={args.trials}", f"run.epochs={args.epochs}",
                 f"run.scheduler_config.T_max={args.epochs}", "sweep.scheduler={name: fifo}",
                 f"sweep.max_concurrent_trials={args.slots}", f"sweep.storage_path={storage}",
                 "run.checkpoint_config.enabled=false", "run.early_stopping_config.enabled=false",
                 "sweep.sampler={name: RandomSampler, seed: 0}"]
    return load_experiment(REPO / "experiments" / "digits_mlp.yaml", overrides)


def in_process(cfg) -> tuple[float, float]:
    """Plain Optuna: study.optimize over the same space, Trainer with all built-ins, one process."""
    import optuna
    import torch

    from tuneloop.training.build import build_run
    from tuneloop.config import RunConfig
    from tuneloop.config.search_space import apply_params, to_optuna

    torch.set_num_threads(1)
    distributions = to_optuna(cfg.sweep.search_space)
    base = cfg.run.model_dump(mode="json", by_alias=True)
    trained = []

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    started = time.perf_counter()
    for _ in range(cfg.sweep.num_samples):
        trial = study.ask(distributions)
        run = RunConfig.model_validate(apply_params(base, trial.params))
        trial_started = time.perf_counter()
        parts = build_run(run, device=torch.device("cpu"))
        study.tell(trial, parts.trainer.train(parts.train_loader, parts.val_loader, run.epochs))
        trained.append(time.perf_counter() - trial_started)
    return time.perf_counter() - started, sum(trained)


def with_tuneloop(cfg) -> tuple[float, float]:
    """`tuneloop sweep` (embedded local Ray, started and stopped inside the timing)."""
    from tuneloop.sweep.paths import experiment_dir
    from tuneloop.sweep.run import run_sweep

    started = time.perf_counter()
    run_sweep(cfg, quiet=True)
    wall = time.perf_counter() - started
    trained = 0.0
    for result in experiment_dir(cfg).glob("trial_*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        trained += rows[-1]["reported_at"] - rows[0]["started_at"]
    return wall, trained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--slots", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    storage = tempfile.mkdtemp(prefix="tuneloop-bench-")
    try:
        cfg = experiment(args, storage)
        a_wall, a_trained = in_process(cfg)
        b_wall, b_trained = with_tuneloop(cfg)
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    print(f"{args.trials} digits-MLP trials x {args.epochs} epochs, {args.slots} slots, Python {sys.version.split()[0]}")
    print(f"(a) in-process Optuna + Trainer, sequential: {a_wall:7.2f} s (training {a_trained:.2f} s)")
    print(f"(b) tuneloop sweep, fifo, {args.slots} parallel:   {b_wall:7.2f} s (training {b_trained:.2f} s)")
    print(f"ratio b/a: {b_wall / a_wall:.3f}   (target <= 0.65)")
    print(f"sweep efficiency: {b_trained / (args.slots * b_wall):.3f}   (target >= 0.85 for trials of >= 2 s; "
          f"mean trial {b_trained / args.trials:.2f} s)")


if __name__ == "__main__":
    main()
