"""Search efficiency: schedulers fifo, asha, hyperband, median and pfl on the same sweep.

Each bench runs `--samples` configurations × `--epochs` epochs per scheduler, repeated with
`--seeds` (the Optuna TPE sampler's seed), and prints per scheduler: the best val_loss the sweep
picks (best final val_loss of the trials that ran to their end; mean ± std over seeds), the final
val_loss (and metric) of that configuration retrained fully, the epochs trained, the wall time,
and the ratios to fifo; then pfl against asha at equal epochs (each one's best within the smaller
of the two budgets, in the order the epochs were reported).

Benches: `digits` (experiments/digits_mlp.yaml, classification), `diabetes`
(experiments/diabetes_mlp.yaml, regression) — real sweeps through `tuneloop.sweep.run_sweep` on a
local Ray — and `synthetic` (`tuneloop.tune.synthetic`: no training; "retrained" is the picked
configuration's noise-free final loss, regret is that minus the family's best).

Run: `.venv/bin/python benchmarks/search_efficiency.py --bench all` (about 25 min on 2 cores; `--bench
synthetic` about 3 min). Writes `benchmarks/results/search_efficiency_<bench>.csv` (the table;
for synthetic `<bench>` is `synthetic_f<fidelity>`),
`..._<bench>_runs.csv` (one row per sweep) and, for the real benches, the learning curves of the
fifo sweeps in `curves_<bench>.json` (read by benchmarks/prediction_quality.py).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO / "tests" / "support"))  # tl_ray.start_ray / stop_ray: a local Ray in its own temp dir

SCHEDULERS = ("fifo", "asha", "hyperband", "median", "pfl", "pfl_power_law")  # pfl_*: pfl with other settings
EXPERIMENTS = {"digits": "digits_mlp.yaml", "diabetes": "diabetes_mlp.yaml"}
METRIC = {"digits": "val_accuracy", "diabetes": "val_mae", "synthetic": "true_final"}


def scheduler_settings(bench: str, epochs: int) -> dict[str, dict]:
    """The kwargs each scheduler runs with (`sweep.scheduler` minus the name)."""
    grace = 5 if bench == "diabetes" else 3  # as in the experiment files (synthetic: as digits)
    return {
        "fifo": {},
        "asha": {"grace_period": grace, "reduction_factor": 3},
        "hyperband": {"reduction_factor": 3},
        "median": {"grace_period": grace, "min_samples_required": 3},
        "pfl": {"k": 2, "n_startup_trials": 3, "n_warmup_epochs": 4},  # predictor, calibrate: a sweep's defaults
        "pfl_power_law": {"k": 2, "n_startup_trials": 3, "n_warmup_epochs": 4, "predictor": "power_law",
                          "calibrate": True},
    }


def base(label: str) -> str:
    """The scheduler a row label runs (`pfl_power_law` is pfl with other settings)."""
    return "pfl" if label.startswith("pfl_") else label


# ---------------------------------------------------------------- real sweeps (digits, diabetes)

def experiment(bench: str, scheduler: str, kwargs: dict, seed: int, args, storage: str):
    from tuneloop.config import load_experiment

    spec = json.dumps({"name": base(scheduler), **kwargs})
    overrides = [f"sweep.num_samples={args.samples}", f"run.epochs={args.epochs}",
                 f"sweep.scheduler={spec}", f"sweep.sampler={{name: TPESampler, seed: {seed}}}",
                 "sweep.max_concurrent_trials=2", f"sweep.storage_path={storage}",
                 "run.checkpoint_config.enabled=false", "run.early_stopping_config.enabled=false",
                 "run.wandb_config.enabled=false", f"run.name={bench}_{scheduler}_{seed}"]
    if bench == "digits":
        overrides.append(f"run.scheduler_config.T_max={args.epochs}")  # cosine over the whole run
    return load_experiment(REPO / "experiments" / EXPERIMENTS[bench], overrides)


def read_trials(directory: Path) -> dict[str, list[dict]]:
    """trial id → its result rows (one per epoch)."""
    trials = {}
    for path in sorted(directory.glob("trial_*/result.json")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        trials[path.parent.name.removeprefix("trial_")] = rows
    return trials


def best_so_far(trials: dict[str, list[dict]]) -> list[tuple[int, float, str]]:
    """(epochs spent, best final val_loss, trial) each time a completed trial improves the pick,
    with the epochs of all trials counted in the order they were reported."""
    rows = sorted((row for rows in trials.values() for row in rows), key=lambda r: r["reported_at"])
    spent, best, trace = 0, math.inf, []
    for row in rows:
        spent += 1
        value = row.get("val_loss")
        if row.get("trial_done") and row.get("done_reason") == "complete" and _finite(value) and value < best:
            best = value
            trace.append((spent, best, row["trial_id"]))
    return trace


def at_budget(trace, budget: int) -> float:
    value = math.inf
    for spent, best, *_ in trace:
        if spent > budget:
            break
        value = best
    return value


def retrain(cfg, config: dict) -> tuple[float, float]:
    """Train the configuration for the full epochs in this process: (final val_loss, final metric)."""
    import torch

    from tuneloop.training.build import build_run
    from tuneloop.callbacks import TrainingCallback
    from tuneloop.config import RunConfig
    from tuneloop.config.search_space import apply_params

    class LastMetrics(TrainingCallback):
        """Keeps the last epoch's validation metrics."""

        priority = 99
        metrics: dict = {}

        def on_epoch_end(self, trainer, *, metrics, **kwargs):
            """Keep this epoch's metrics."""
            self.metrics = dict(metrics)

    run = RunConfig.model_validate(apply_params(cfg.run.model_dump(mode="json", by_alias=True), config))
    last = LastMetrics()
    parts = build_run(run, device=torch.device("cpu"), extra_callbacks=[last])
    final = parts.trainer.train(parts.train_loader, parts.val_loader, run.epochs)
    values = list(last.metrics.values())
    return final, float(values[0]) if values else math.nan


def run_real(bench: str, scheduler: str, kwargs: dict, seed: int, args) -> dict:
    from tuneloop.sweep.run import run_sweep

    storage = tempfile.mkdtemp(prefix=f"tlse-{bench}-")
    try:
        cfg = experiment(bench, scheduler, kwargs, seed, args, storage)
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            run_sweep(cfg, quiet=True)
        wall = time.perf_counter() - started
        directory = Path(storage) / cfg.run.name
        trials = read_trials(directory)
        trace = best_so_far(trials)
        best_trial = trace[-1][2] if trace else None
        config = trials[best_trial][-1]["config"] if best_trial else {}
        retrained, metric = retrain(cfg, config) if best_trial else (math.nan, math.nan)
        curves = {t: [r["val_loss"] for r in rows] for t, rows in trials.items()}
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    return {"bench": bench, "scheduler": scheduler, "seed": seed, "best_val_loss": trace[-1][1] if trace else math.inf,
            "retrained_val_loss": retrained, "retrained_metric": metric, "epochs": sum(map(len, trials.values())),
            "completed": sum(1 for rows in trials.values() if rows[-1].get("done_reason") == "complete"),
            "trials": len(trials), "wall_s": wall, "trace": trace, "curves": curves, "config": config}


# ---------------------------------------------------------------- synthetic

def run_synth(scheduler: str, kwargs: dict, seed: int, args) -> dict:
    from tuneloop.tune.synthetic import run_synthetic_sweep

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        out = run_synthetic_sweep(base(scheduler), kwargs, num_samples=args.samples, epochs=args.epochs,
                                  fidelity=args.fidelity, noise=args.noise, seed=seed, concurrency=1)
    trace = [(spent, out.optimum + regret) for spent, regret in out.trace]  # true finals of the picks
    return {"bench": "synthetic", "scheduler": scheduler, "seed": seed, "best_val_loss": out.best_observed,
            "retrained_val_loss": out.best_true, "retrained_metric": out.regret, "epochs": out.epochs_spent,
            "completed": out.completed, "trials": out.trials, "wall_s": out.wall_s, "trace": trace}


# ---------------------------------------------------------------- the table

def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def mean_std(values) -> tuple[float, float]:
    values = [float(v) for v in values]
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table(bench: str, runs: list[dict]) -> list[dict]:
    """One row per scheduler: means ± std over seeds and ratios to fifo."""
    rows = []
    by = {s: [r for r in runs if r["scheduler"] == s] for s in dict.fromkeys(r["scheduler"] for r in runs)}
    fifo = by.get("fifo")
    base = {k: mean_std(r[k] for r in fifo)[0] for k in ("best_val_loss", "epochs", "wall_s")} if fifo else None
    for scheduler, group in by.items():
        row = {"bench": bench, "scheduler": scheduler, "seeds": len(group)}
        for key in ("best_val_loss", "retrained_val_loss", "retrained_metric", "epochs", "wall_s"):
            row[key], row[f"{key}_std"] = mean_std(r[key] for r in group)
        if base:
            row["best_vs_fifo"] = row["best_val_loss"] / base["best_val_loss"]
            row["epochs_vs_fifo"] = row["epochs"] / base["epochs"]
            row["wall_vs_fifo"] = row["wall_s"] / base["wall_s"]
        rows.append(row)
    return rows


def equal_epochs(runs: list[dict]) -> list[dict]:
    """pfl vs asha per seed: each one's best within the smaller epoch budget of the two."""
    out = []
    for seed in sorted({r["seed"] for r in runs}):
        pair = {r["scheduler"]: r for r in runs if r["seed"] == seed and r["scheduler"] in ("asha", "pfl")}
        if len(pair) == 2:
            budget = min(pair["asha"]["epochs"], pair["pfl"]["epochs"])
            out.append({"seed": seed, "budget": budget, "asha": at_budget(pair["asha"]["trace"], budget),
                        "pfl": at_budget(pair["pfl"]["trace"], budget)})
    return out


def print_table(bench: str, rows: list[dict], pairs: list[dict], args) -> None:
    metric = {"digits": "val_acc", "diabetes": "val_mae", "synthetic": "regret"}[bench]
    retrained = "true final" if bench == "synthetic" else "retrained"
    print(f"\n{bench}: {args.samples} configs x {args.epochs} epochs, seeds {args.seeds}"
          + (f", fidelity {args.fidelity}, noise {args.noise}" if bench == "synthetic" else ""))
    print(f"{'scheduler':<14} {'best val_loss':>17} {retrained:>17} {metric:>15} {'epochs':>12} {'wall s':>11}"
          f" {'best/fifo':>9} {'ep/fifo':>7} {'wall/fifo':>9}")
    for r in rows:
        print(f"{r['scheduler']:<14} {r['best_val_loss']:>9.4f} ±{r['best_val_loss_std']:<6.4f} "
              f"{r['retrained_val_loss']:>9.4f} ±{r['retrained_val_loss_std']:<6.4f} "
              f"{r['retrained_metric']:>7.4f} ±{r['retrained_metric_std']:<6.4f} "
              f"{r['epochs']:>6.0f} ±{r['epochs_std']:<4.0f} {r['wall_s']:>6.1f} ±{r['wall_s_std']:<3.1f}"
              f" {r.get('best_vs_fifo', math.nan):>9.3f} {r.get('epochs_vs_fifo', math.nan):>7.3f}"
              f" {r.get('wall_vs_fifo', math.nan):>9.3f}")
    if pairs:
        print("pfl vs asha at equal epochs (best val_loss within min(epochs_asha, epochs_pfl))"
              + (" [true final of the pick]" if bench == "synthetic" else "") + ":")
        for p in pairs:
            print(f"  seed {p['seed']}: budget {p['budget']:>4} epochs  asha {p['asha']:.4f}  pfl {p['pfl']:.4f}")
        a, b = statistics.fmean(p["asha"] for p in pairs), statistics.fmean(p["pfl"] for p in pairs)
        print(f"  mean: asha {a:.4f}  pfl {b:.4f}  (pfl/asha {b / a:.3f})")


def write_csv(path: Path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        writer.writerows([{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows])


def cached(bench: str, scheduler: str, kwargs: dict, seed: int, args) -> dict:
    """One sweep, or its result from `--cache` when the same sweep (same settings) ran before."""
    extra = {"fidelity": args.fidelity, "noise": args.noise} if bench == "synthetic" else {}
    key = json.dumps([bench, base(scheduler), kwargs, seed, args.samples, args.epochs, extra], sort_keys=True)
    path = Path(args.cache) / f"{bench}_{base(scheduler)}_{seed}_{hashlib.sha256(key.encode()).hexdigest()[:12]}.json" \
        if args.cache else None
    if path is not None and path.is_file():
        return {**json.loads(path.read_text()), "scheduler": scheduler}
    if bench == "synthetic":
        run = run_synth(scheduler, kwargs, seed, args)
    else:
        run = run_real(bench, scheduler, kwargs, seed, args)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(run))
    return run


def run_bench(bench: str, args) -> None:
    settings = scheduler_settings(bench, args.epochs)
    name = f"synthetic_f{args.fidelity:g}" if bench == "synthetic" else bench  # the files' names
    for override in args.pfl:  # --pfl key=value
        key, _, value = override.partition("=")
        settings["pfl"][key] = json.loads(value) if value[:1] in "0123456789-[{tf" else value
    runs = []
    for scheduler in args.schedulers:
        for seed in args.seeds:
            started = time.perf_counter()
            run = cached(bench, scheduler, settings[scheduler], seed, args)
            runs.append(run)
            print(f"[{bench}] {scheduler:<9} seed {seed}: best {run['best_val_loss']:.4f} retrained "
                  f"{run['retrained_val_loss']:.4f} epochs {run['epochs']} wall {run['wall_s']:.1f} s "
                  f"({time.perf_counter() - started:.1f} s with retraining)", flush=True)
    rows, pairs = table(bench, runs), equal_epochs(runs)
    print_table(bench, rows, pairs, args)
    if args.no_write:
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    for row in rows:
        row["settings"] = json.dumps(settings[row["scheduler"]], sort_keys=True)
    write_csv(RESULTS / f"search_efficiency_{name}.csv", rows)
    write_csv(RESULTS / f"search_efficiency_{name}_runs.csv",
              [{k: v for k, v in r.items() if k not in ("trace", "curves", "config")} | {
                  "config": json.dumps(r.get("config", {}), sort_keys=True)} for r in runs])
    write_csv(RESULTS / f"search_efficiency_{name}_equal_epochs.csv", pairs)
    fifo_curves = [c for r in runs if r["scheduler"] == "fifo" for c in r.get("curves", {}).values()]
    if fifo_curves:
        (RESULTS / f"curves_{bench}.json").write_text(json.dumps(
            {"bench": bench, "epochs": args.epochs, "curves": fifo_curves}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", choices=("synthetic", "digits", "diabetes", "all"), default="all")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--schedulers", nargs="+", choices=SCHEDULERS, default=list(SCHEDULERS))
    parser.add_argument("--fidelity", type=float, default=0.5, help="synthetic: how well early losses rank final ones")
    parser.add_argument("--noise", type=float, default=0.02, help="synthetic: relative noise of each loss")
    parser.add_argument("--pfl", nargs="*", default=[], metavar="KEY=VALUE", help="override pfl's settings")
    parser.add_argument("--cache", help="a directory keeping each sweep's result: a re-run reuses the sweeps "
                        "it holds (same bench, scheduler, settings, seed, size)")
    parser.add_argument("--no-write", action="store_true", help="print only (a quick check)")
    args = parser.parse_args()
    import torch

    from tl_ray import start_ray, stop_ray

    os.environ.setdefault("WANDB_MODE", "disabled")
    torch.set_num_threads(1)
    print(f"machine: {os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, no GPU used; Python {platform.python_version()}", flush=True)
    benches = ("synthetic", "digits", "diabetes") if args.bench == "all" else (args.bench,)
    temp_dir = start_ray(num_cpus=os.cpu_count() or 2)
    try:
        for bench in benches:
            run_bench(bench, args)
    finally:
        stop_ray(temp_dir)


if __name__ == "__main__":
    main()
