"""Sweep overhead: the same digits-MLP configurations (a) sequentially in-process with plain
Optuna calling our Trainer, (b) with the `tuneloop sweep` command on the local CPUs (fifo scheduler).

Prints wall times, the ratio b/a, the sweep's efficiency (the sum of per-trial training time /
(parallel slots × the command's wall time)), and the command's start-up and shutdown: seconds from
its launch to the first trial's first epoch (the first `reported_at` in a trial's result.json) and
from the last trial's last epoch (the last `reported_at`) to its exit. (b) is a subprocess timed
from its launch to its exit: Python, imports, checks, Ray start and stop are all included.
Run: `.venv/bin/python benchmarks/sweep_overhead.py` (`--trials 16 --epochs 90`, the headline case;
`--repeats N` runs (b) N times; `--src DIR` runs (b) with another checkout's `src`, e.g. an old
commit's, for a before/after comparison in one run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def overrides(args, storage: str) -> list[str]:
    return [f"sweep.num_samples={args.trials}", f"run.epochs={args.epochs}",
            f"run.scheduler_config.T_max={args.epochs}", "sweep.scheduler={name: fifo}",
            f"sweep.max_concurrent_trials={args.slots}", f"sweep.storage_path={storage}",
            "run.checkpoint_config.enabled=false", "run.early_stopping_config.enabled=false",
            "sweep.sampler={name: RandomSampler, seed: 0}"]


def in_process(args, storage: str) -> tuple[float, float]:
    """Plain Optuna: study.optimize over the same space, Trainer with all built-ins, one process."""
    import optuna
    import torch

    from tuneloop.config import RunConfig, load_experiment
    from tuneloop.config.search_space import apply_params, to_optuna
    from tuneloop.training.build import build_run

    cfg = load_experiment(REPO / "experiments" / "digits_mlp.yaml", overrides(args, storage))
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


def command(args, storage: str, src: Path | None) -> dict:
    """`tuneloop sweep` as a subprocess (the console script's code, with `src` first on the path)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src), *filter(None, [env.get("PYTHONPATH")])])
    argv = [sys.executable, "-c", "import sys; from tuneloop.cli import main; sys.exit(main())", "sweep",
            str(REPO / "experiments" / "digits_mlp.yaml"), "--quiet"]
    for item in overrides(args, storage):
        argv += ["--set", item]
    launched = time.time()
    proc = subprocess.run(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    exited = time.time()
    if proc.returncode != 0:
        sys.exit(f"tuneloop sweep exited {proc.returncode}:\n{proc.stdout}")
    rows = []
    for result in Path(storage, "digits_mlp").glob("trial_*/result.json"):
        rows.append([json.loads(line) for line in result.read_text().splitlines() if line.strip()])
    if len(rows) != args.trials:
        sys.exit(f"expected {args.trials} trials' result.json, found {len(rows)}:\n{proc.stdout}")
    return {"wall": exited - launched,
            "trained": sum(r[-1]["reported_at"] - r[0]["started_at"] for r in rows),
            "startup": min(r[0]["reported_at"] for r in rows) - launched,
            "shutdown": exited - max(r[-1]["reported_at"] for r in rows)}


def spread(values: list[float]) -> str:
    shown = " ".join(f"{v:.2f}" for v in values)
    return f"{statistics.median(values):6.2f}" + (f"  (runs: {shown})" if len(values) > 1 else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=90)
    parser.add_argument("--slots", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--repeats", type=int, default=1, help="runs of (b); medians are shown")
    parser.add_argument("--src", type=Path, help="run (b) with this tuneloop source directory (default: this one)")
    args = parser.parse_args()
    storage = tempfile.mkdtemp(prefix="tuneloop-bench-")
    try:
        a_wall, a_trained = in_process(args, storage)
        runs = []
        for _ in range(args.repeats):
            shutil.rmtree(storage, ignore_errors=True)
            runs.append(command(args, storage, args.src))
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    b = {key: [run[key] for run in runs] for key in runs[0]}
    b_wall, b_trained = statistics.median(b["wall"]), statistics.median(b["trained"])
    print(f"{args.trials} digits-MLP trials x {args.epochs} epochs, {args.slots} slots, Python {sys.version.split()[0]}"
          + (f", (b) from {args.src}" if args.src else ""))
    print(f"(a) in-process Optuna + Trainer, sequential: {a_wall:7.2f} s (training {a_trained:.2f} s)")
    print(f"(b) tuneloop sweep, fifo, {args.slots} parallel:   {spread(b['wall'])} s (training {b_trained:.2f} s)")
    print(f"start-up, command launch -> first trial's first epoch: {spread(b['startup'])} s   (target <= 4)")
    print(f"shutdown, last trial's last epoch -> command exit:     {spread(b['shutdown'])} s   (target <= 1)")
    print(f"ratio b/a: {spread([w / a_wall for w in b['wall']])}   (target <= 0.60 at 90 epochs)")
    print(f"sweep efficiency: {spread([t / (args.slots * w) for t, w in zip(b['trained'], b['wall'])])}   "
          f"(target >= 0.85; mean trial {b_trained / args.trials:.2f} s)")


if __name__ == "__main__":
    main()
