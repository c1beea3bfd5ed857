"""Distributed trials: the start-up each trial pays and the time per epoch, for trials of 1 worker
(one process) and of 2 Ray Train workers on the same total data, side by side in one run.

Both run the default experiment (experiments/digits_mlp.yaml, the learning rate searched) with the
`tuneloop sweep` command, `--trials` trials one after the other (fifo, max_concurrent_trials=1), on
an embedded local Ray. The 2-worker trials use `workers: 2` of `cpu / 2` each, with half the batch
per worker: the same global batch, the same steps per epoch, the same samples.

- time per epoch: the median gap between a trial's consecutive reports (`reported_at`, the
  worker's clock at each epoch's report);
- start-up per trial: for every trial after the first, the gap between the previous trial's last
  report and this trial's first, less one epoch (actor or Train run start, data, model: what a
  trial costs before it trains); the first trial's, from the command's launch, also holds Python,
  imports and Ray's start, and is shown apart.

Run: `.venv/bin/python benchmarks/distributed_trial.py` (`--trials 3 --epochs 10`; `--hidden 1024
--layers 4` for a model whose epochs are compute-bound). Never run it while other benchmarks run.
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


def sweep(args, workers: int, work: Path) -> dict:
    """One `tuneloop sweep` with trials of `workers` workers; its per-trial report times."""
    storage = work / f"w{workers}"
    batch = args.batch_size // workers
    overrides = [f"sweep.num_samples={args.trials}", f"run.epochs={args.epochs}",
                 f"run.scheduler_config.T_max={args.epochs}", "sweep.scheduler={name: fifo}",
                 "sweep.max_concurrent_trials=1", f"sweep.storage_path={storage}",
                 f"run.net_config={{hidden: {args.hidden}, layers: {args.layers}, dropout: 0.1}}",
                 f"run.batch_size={batch}", "run.checkpoint_config.save_every_n_epochs=5",
                 "run.early_stopping_config.enabled=false", "sweep.sampler={name: RandomSampler, seed: 0}",
                 "sweep.search_space={optimizer_config.lr: {type: float, low: 0.01, high: 0.3, log: true}}",
                 f"sweep.resources_per_trial={{workers: {workers}, cpu: {args.cpu / workers:g}, gpu: 0}}"]
    command = [sys.executable, "-m", "tuneloop.cli", "sweep", str(REPO / "experiments" / "digits_mlp.yaml"),
               "--quiet", *[x for o in overrides for x in ("--set", o)]]
    ray_tmp = tempfile.mkdtemp(prefix="tlb-", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "WANDB_MODE": "offline"}
    launched = time.time()
    try:
        done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    if done.returncode != 0:
        raise SystemExit(f"the {workers}-worker sweep failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    trials = []
    for result in (storage / "digits_mlp").glob("trial_*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        trials.append([row["reported_at"] for row in rows])
    trials.sort(key=lambda times: times[0])
    epoch = statistics.median(b - a for times in trials for a, b in zip(times, times[1:]))
    startups = [nxt[0] - prev[-1] - epoch for prev, nxt in zip(trials, trials[1:])]
    return {"epoch_s": epoch, "startup_s": statistics.median(startups), "first_s": trials[0][0] - launched - epoch,
            "wall_s": time.time() - launched, "epochs": [len(t) for t in trials]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128, help="the global batch (per worker: / workers)")
    parser.add_argument("--cpu", type=float, default=1.0, help="CPUs per trial (per worker: / workers)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tuneloop-dist-bench-"))
    try:
        one, two = sweep(args, 1, work), sweep(args, 2, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"digits MLP hidden={args.hidden} layers={args.layers}, global batch {args.batch_size}, "
          f"{args.trials} trials x {args.epochs} epochs, {args.cpu:g} CPU per trial, {os.cpu_count()} cores")
    print(f"{'':34}{'1 worker':>12}{'2 workers':>12}{'2 / 1':>10}")
    for label, key in (("start-up per trial (s)", "startup_s"), ("first trial, from launch (s)", "first_s"),
                       ("time per epoch (s)", "epoch_s"), ("sweep wall time (s)", "wall_s")):
        print(f"{label:34}{one[key]:>12.3f}{two[key]:>12.3f}{two[key] / one[key]:>10.2f}")


if __name__ == "__main__":
    main()
