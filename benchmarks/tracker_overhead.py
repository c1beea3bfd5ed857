"""Tracker overhead inside Tune: seconds per epoch of a trial with `sweep.loggers` against none.

Variants, each one `tuneloop sweep` of a single trial (fifo) of the digits MLP, in one embedded Ray
started once, alternating (A B C ... A B C) so drift on a shared machine hits all:
- none: no tracker;
- tensorboard: Tune's TBXLoggerCallback;
- mlflow: tuneloop's MLflowTracker (one log_batch a report, from a writer process of its own);
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

from checkpoint_overhead import MODELS, experiment  # the same one-trial sweep of the digits MLP (no checkpoints: None)
from checkpoint_overhead import seconds_per_epoch as one_trial_seconds_per_epoch

VARIANTS = ("none", "tensorboard", "mlflow", "Tune's MLflowLoggerCallback")
DIGITS, _ = MODELS["digits MLP (default experiment)"]  # its one configuration


def seconds_per_epoch(cfg, variant: str, store: Path) -> float:
    """checkpoint_overhead's one-trial timing, with Tune's own MLflow callback swapped in for its variant."""
    import tuneloop.tune.loggers as loggers

    build = loggers.build_loggers
    if variant == "Tune's MLflowLoggerCallback":
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        loggers.build_loggers = lambda cfg: [MLflowLoggerCallback(f"sqlite:///{store}", experiment_name="bench")]
    try:
        return one_trial_seconds_per_epoch(cfg)
    finally:
        loggers.build_loggers = build


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
                cfg = experiment(str(scratch / "results"), DIGITS + [f"sweep.loggers={json.dumps(spec)}"], args.epochs,
                                 None)
                times[variant].append(seconds_per_epoch(cfg, variant, store))
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
