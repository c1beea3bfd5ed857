"""Tracker overhead inside Tune: seconds per epoch of a trial with `sweep.loggers` against none.

Variants, each one `tuneloop sweep` of a single trial (fifo) of the digits MLP, in one embedded Ray
started once, alternating (A B C ... A B C) so drift on a shared machine hits all:
- none: no tracker;
- tensorboard: Tune's TBXLoggerCallback;
- mlflow: tuneloop's MLflowTracker (one log_batch a report, from a background thread);
- Tune's MLflowLoggerCallback as it comes (one call per number, on the driver's loop), in the same
  place of the Tuner, for comparison (the benchmark swaps it in; tuneloop never uses it so).
Both MLflow variants write into a new SQLite store of their own. Per-epoch time is taken from the
trial's own reports (`reported_at`) after a warm-up epoch, so start-up is excluded; a trial reports
each epoch and waits for the driver to take it, so what the driver spends per result shows here.
Run: `.venv/bin/python benchmarks/tracker_overhead.py` (`--repeats 3`, `--epochs 60`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("none", "tensorboard", "mlflow", "Tune's MLflowLoggerCallback")


def experiment(storage: str, epochs: int, loggers: list):
    from tuneloop.config import load_experiment

    return load_experiment(REPO / "experiments" / "digits_mlp.yaml", [
        "sweep.num_samples=1", "sweep.max_concurrent_trials=1", "sweep.scheduler={name: fifo}",
        f"run.epochs={epochs}", f"run.scheduler_config.T_max={epochs}", f"sweep.storage_path={storage}",
        "run.early_stopping_config.enabled=false", "run.checkpoint_config.enabled=false",
        "sweep.search_space={net_config.hidden: {type: categorical, choices: [128]}}",
        f"sweep.loggers={json.dumps(loggers)}"])


def seconds_per_epoch(cfg, variant: str, store: Path) -> float:
    import tuneloop.tune.loggers as loggers
    from tuneloop.sweep.paths import experiment_dir
    from tuneloop.sweep.run import run_sweep

    build = loggers.build_loggers
    if variant == "Tune's MLflowLoggerCallback":
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        loggers.build_loggers = lambda cfg: [MLflowLoggerCallback(f"sqlite:///{store}", experiment_name="bench")]
    try:
        run_sweep(cfg, quiet=True, overwrite=True)
    finally:
        loggers.build_loggers = build
    [result] = experiment_dir(cfg).glob("trial_*/result.json")
    times = [json.loads(line)["reported_at"] for line in result.read_text().splitlines() if line.strip()]
    return (times[-1] - times[1]) / (len(times) - 2)  # from the end of epoch 1: no warm-up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args()

    from tuneloop.tune.session import ensure_ray

    ensure_ray(None)
    scratch = Path(tempfile.mkdtemp(prefix="tl-tracker-bench-"))
    times = {v: [] for v in VARIANTS}
    try:
        for repeat in range(args.repeats):
            for variant in VARIANTS:
                store = scratch / f"tune-{repeat}.db"
                spec = {"none": [], "tensorboard": ["tensorboard"],
                        "mlflow": [{"name": "mlflow", "tracking_uri": f"sqlite:///{scratch}/ours-{repeat}.db"}],
                        "Tune's MLflowLoggerCallback": []}[variant]
                times[variant].append(seconds_per_epoch(experiment(str(scratch / "results"), args.epochs, spec),
                                                        variant, store))
        base = statistics.median(times["none"])
        print(f"digits MLP, {args.epochs} epochs, one trial, median of {args.repeats} "
              f"(seconds per epoch, ratio to no tracker):")
        for variant in VARIANTS:
            median = statistics.median(times[variant])
            spread = f"{min(times[variant]) / base:.3f}-{max(times[variant]) / base:.3f}"
            print(f"  {variant:<30} {median * 1000:7.1f} ms  {median / base:6.3f}  (runs {spread})")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
