"""Soak: a long sweep of a tiny model, checking that nothing leaks or goes missing.

A 200-trial sweep (default; `--trials 2000` for the long soak) of a 1-layer digits MLP (4 epochs,
ASHA, a checkpoint every epoch, `keep_last_k: 1`) on 2 CPUs, run in this process (this process is
the driver). Checks, and prints:

- every trial accounted for: Tune's trials (results.csv, one row per trial) and the Optuna study
  agree on the number of trials and on the number complete / pruned / failed, none RUNNING;
- the driver's memory: RSS (psutil) sampled every few seconds, printed at the start, middle and
  end of the sweep (by trials started), with the growth over the second half (target <= 75 KB
  per trial);
- the cost per trial: the mean wall time per trial (between trial ends) over the last 10% of
  the trials against the first 10% (target <= 1.2);
- disk: every finished trial keeps at most `keep_last_k` + 1 checkpoints (the last k and the best),
  and the experiment directory's size against that bound.

Not part of the test suite (several minutes). Run:
`.venv/bin/python benchmarks/soak.py [--trials 200] [--epochs 4] [--keep-last-k 1] [--cpus 2]`
Exit status 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import ray  # noqa: F401  (puts Ray's bundled psutil on sys.path)
import psutil

REPO = Path(__file__).resolve().parents[1]
MB = 1024 * 1024


def experiment(args, storage: str):
    from tuneloop.config import load_experiment

    overrides = [
        f"sweep.num_samples={args.trials}", f"run.epochs={args.epochs}", f"run.scheduler_config.T_max={args.epochs}",
        "run.name=soak", "run.net_config={hidden: 32, layers: 1, dropout: 0.0}",
        "run.optimizer=torch.optim.AdamW", "run.optimizer_config={lr: 0.01}",
        "run.early_stopping_config.enabled=false",
        f"run.checkpoint_config={{save_every_n_epochs: 1, keep_last_k: {args.keep_last_k}, monitor: val_loss, mode: min}}",
        "sweep.scheduler={name: asha, grace_period: 1, reduction_factor: 2}",
        "sweep.sampler={name: TPESampler, seed: 0}", f"sweep.max_concurrent_trials={args.cpus}",
        "sweep.resources_per_trial={cpu: 1, gpu: 0}", f"sweep.storage_path={storage}", "sweep.max_failures=1",
        "sweep.search_space={optimizer_config.lr: {type: float, low: 1.0e-4, high: 0.3, log: true}, "
        "net_config.hidden: {type: categorical, choices: [16, 32, 64]}}",
    ]
    return load_experiment(REPO / "experiments" / "digits_mlp.yaml", overrides)


def dir_size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass
    return total


class Sampler(threading.Thread):
    """Samples (seconds, driver RSS, trial directories, experiment dir bytes) every `period` s."""

    def __init__(self, directory: Path, period: float):
        super().__init__(daemon=True)
        self.directory, self.period = directory, period
        self.samples: list[tuple[float, int, int, int]] = []
        self.stop = threading.Event()
        self.process = psutil.Process()
        self.started = time.monotonic()
        self.trace_at: int | None = None  # with --tracemalloc: take a snapshot once this many trials started
        self.snapshot = None
        self.trace_until: int | None = None  # ... and a second one once this many started
        self.late_snapshot = None
        self.malloc_trim = False

    def sample(self) -> None:
        trials = len(list(self.directory.glob("trial_*"))) if self.directory.is_dir() else 0
        if self.trace_at is not None and trials >= self.trace_at and self.snapshot is None:
            import tracemalloc

            self.snapshot = tracemalloc.take_snapshot()
        if self.trace_until is not None and trials >= self.trace_until and self.late_snapshot is None:
            import tracemalloc

            self.late_snapshot = tracemalloc.take_snapshot()  # while the sweep still runs
        size = dir_size(self.directory) if self.directory.is_dir() else 0
        if self.malloc_trim:  # glibc: hand freed heap pages back, so RSS shows what is still held
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.samples.append((time.monotonic() - self.started, self.process.memory_info().rss, trials, size))

    def run(self) -> None:
        while not self.stop.wait(self.period):
            self.sample()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--keep-last-k", type=int, default=1)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--period", type=float, default=3.0, help="seconds between RSS samples")
    parser.add_argument("--keep", action="store_true", help="keep the experiment directory (printed)")
    parser.add_argument("--malloc-trim", action="store_true",
                        help="call glibc's malloc_trim before each RSS sample (growth that is only fragmentation goes)")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="print the driver's Python allocations that grew from 25%% to 90%% of the trials started")
    args = parser.parse_args()

    import optuna

    from tuneloop.sweep.paths import experiment_dir
    from tuneloop.sweep.run import run_sweep

    storage = tempfile.mkdtemp(prefix="tuneloop-soak-")
    ray_tmp = tempfile.mkdtemp(prefix="tlsoak-", dir="/tmp")
    cfg = experiment(args, storage)
    directory = experiment_dir(cfg)
    failures: list[str] = []
    process = psutil.Process()
    rss_before_ray = process.memory_info().rss
    from tuneloop.tune.session import apply_tune_settings

    apply_tune_settings()  # before Ray starts: its workers read Tune's settings from their environment
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, _temp_dir=ray_tmp,
             log_to_driver=False, configure_logging=True, logging_level="WARNING")
    sampler = Sampler(directory, args.period)
    sampler.malloc_trim = args.malloc_trim
    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start(8)
        sampler.trace_at = args.trials // 4
        sampler.trace_until = args.trials * 9 // 10
    sampler.sample()
    sampler.start()
    started = time.monotonic()
    try:
        status = run_sweep(cfg, quiet=True)
    finally:
        sampler.stop.set()
        sampler.join()
        sampler.sample()
        ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    wall = time.monotonic() - started
    print(f"\n=== soak: {args.trials} trials x {args.epochs} epochs, asha, keep_last_k={args.keep_last_k}, "
          f"{args.cpus} CPUs: {wall:.0f} s, exit status {status}")
    if status != 0:
        failures.append(f"tuneloop sweep exit status {status}")

    # --- every trial accounted for, in Tune and in Optuna
    with open(directory / "results.csv") as handle:
        tune_rows = list(csv.DictReader(handle))
    tune_states = Counter(row["state"] for row in tune_rows)
    trial_dirs = sorted(directory.glob("trial_*"))
    study = optuna.load_study(study_name=cfg.run.name, storage=f"sqlite:///{directory / 'optuna.db'}")
    names = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}
    optuna_states = Counter(names.get(t.state.name, t.state.name) for t in study.trials)
    print(f"Tune:   {len(tune_rows)} trials ({len(trial_dirs)} trial directories): {dict(tune_states)}")
    print(f"Optuna: {len(study.trials)} trials: {dict(optuna_states)}")
    if not len(tune_rows) == len(trial_dirs) == len(study.trials) == args.trials:
        failures.append(f"trial counts differ: results.csv {len(tune_rows)}, directories {len(trial_dirs)}, "
                        f"study {len(study.trials)}, asked {args.trials}")
    if tune_states != optuna_states:
        failures.append(f"states differ: Tune {dict(tune_states)} vs Optuna {dict(optuna_states)}")
    # the same (parameters, state) pairs on both sides, and contiguous epochs in every trial
    keys = list(cfg.sweep.search_space)
    tune_pairs = Counter((tuple(f"{float(row[k]):.10g}" for k in keys), row["state"]) for row in tune_rows)
    optuna_pairs = Counter((tuple(f"{float(t.params[k]):.10g}" for k in keys), names.get(t.state.name, t.state.name))
                           for t in study.trials)
    if tune_pairs != optuna_pairs:
        failures.append("Tune's and Optuna's trials differ in parameters or state")
    for trial_dir in trial_dirs:
        result = trial_dir / "result.json"
        epochs = [json.loads(line)["epoch"] for line in result.read_text().splitlines() if line.strip()] \
            if result.exists() else []
        if not epochs or epochs != list(range(len(epochs))):
            failures.append(f"{trial_dir.name}: epochs {epochs}")

    # --- the cost per trial: flat (the driver's work per result must not grow with the trials so far)
    ends = sorted(max(json.loads(line)["reported_at"] for line in (d / "result.json").read_text().splitlines()
                      if line.strip()) for d in trial_dirs if (d / "result.json").exists())
    tenth = max(2, len(ends) // 10)
    first = (ends[tenth] - ends[0]) / tenth  # from the first trial's end: start-up excluded
    last = (ends[-1] - ends[-1 - tenth]) / tenth
    per_trial_ratio = last / first if first > 0 else float("nan")
    print(f"wall time per trial: first 10% {first * 1000:.0f} ms, last 10% {last * 1000:.0f} ms, "
          f"ratio {per_trial_ratio:.2f} (target <= 1.2: {'met' if per_trial_ratio <= 1.2 else 'missed'})")

    # --- driver memory: flat
    samples = sampler.samples

    def at_trials(fraction: float):
        target = fraction * args.trials
        return next((s for s in samples if s[2] >= target), samples[-1])
    start, quarter, middle, end = samples[0], at_trials(0.25), at_trials(0.5), samples[-1]
    peak = max(s[1] for s in samples)
    print(f"driver RSS: before ray.init {rss_before_ray / MB:.0f} MB; start {start[1] / MB:.0f} MB; "
          f"25% ({quarter[2]} trials, {quarter[0]:.0f} s) {quarter[1] / MB:.0f} MB; "
          f"middle ({middle[2]} trials, {middle[0]:.0f} s) {middle[1] / MB:.0f} MB; "
          f"end ({end[0]:.0f} s) {end[1] / MB:.0f} MB; peak {peak / MB:.0f} MB ({len(samples)} samples)")
    second_half = (end[1] - middle[1]) / MB
    per_trial_kb = (end[1] - quarter[1]) / 1024 / max(1, args.trials - quarter[2])
    print(f"driver RSS growth: second half {second_half:+.1f} MB, from 25% to the end {per_trial_kb:+.1f} KB/trial")
    half_kb = (end[1] - middle[1]) / 1024 / max(1, args.trials - middle[2])
    print(f"driver RSS growth over the second half: {half_kb:+.1f} KB/trial "
          f"(target <= 75: {'met' if half_kb <= 75 else 'missed'})")
    if args.tracemalloc and sampler.snapshot is not None:
        import tracemalloc

        late = sampler.late_snapshot or tracemalloc.take_snapshot()
        grown = late.compare_to(sampler.snapshot, "traceback")
        print("driver Python allocations grown from 25% to 90% of the trials started (top 12):")
        for stat in grown[:12]:
            print(f"  {stat.size_diff / 1024:+9.0f} KB {stat.count_diff:+7d} blocks")
            for line in stat.traceback.format()[-8:]:
                print("      " + line)
    if half_kb > 75:
        failures.append(f"driver RSS grew {half_kb:.0f} KB per trial over the second half (target <= 75)")
    if per_trial_ratio > 1.2:
        failures.append(f"the wall time per trial grew {per_trial_ratio:.2f}x from the first to the last 10% "
                        "(target <= 1.2)")

    # --- disk: bounded by keep_last_k
    checkpoint_sizes = []
    too_many = []
    for trial_dir in trial_dirs:
        kept = sorted(trial_dir.glob("checkpoint_*"))
        if len(kept) > args.keep_last_k + 1:
            too_many.append(f"{trial_dir.name}: {len(kept)}")
        checkpoint_sizes += [dir_size(p) for p in kept]
    largest = max(checkpoint_sizes, default=0)
    saved = sum(1 for d in trial_dirs if (d / "result.json").exists()
                for line in (d / "result.json").read_text().splitlines()
                if line.strip() and json.loads(line).get("checkpoint_dir_name"))
    bound = len(trial_dirs) * (args.keep_last_k + 1) * largest
    total, in_checkpoints = dir_size(directory), sum(checkpoint_sizes)
    peak_disk = max(s[3] for s in samples)
    print(f"disk: experiment dir {total / MB:.1f} MB (peak while running {peak_disk / MB:.1f} MB); checkpoints "
          f"{len(checkpoint_sizes)} = {in_checkpoints / MB:.1f} MB, largest {largest / 1024:.0f} KB; bound "
          f"trials x (keep_last_k + 1) x largest = {bound / MB:.1f} MB; {saved} checkpoints written "
          f"(without retention: {saved * largest / MB:.1f} MB)")
    print(f"        other files: {(total - in_checkpoints) / MB:.1f} MB "
          f"({(total - in_checkpoints) / 1024 / max(1, len(trial_dirs)):.0f} KB per trial, optuna.db "
          f"{(directory / 'optuna.db').stat().st_size / 1024:.0f} KB)")
    if too_many:
        failures.append(f"trials with more than keep_last_k + 1 checkpoints: {too_many[:5]}")
    if in_checkpoints > bound:
        failures.append("checkpoints exceed the keep_last_k bound")

    if args.keep:
        print(f"experiment directory kept: {directory}")
    else:
        shutil.rmtree(storage, ignore_errors=True)
    print("soak: " + ("PASS" if not failures else "FAIL\n  " + "\n  ".join(failures)))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
