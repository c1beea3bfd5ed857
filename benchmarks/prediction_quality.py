"""Prediction quality: how well each learning-curve predictor extrapolates to the final loss.

For every curve and cut epoch (10, 20, 30 of 40), each predictor of `tuneloop.curves` sees the
first `cut` losses and predicts the loss at the last epoch; the error is |prediction − true
final| / |true final|. Printed per source and predictor: the median and the 90th percentile of
that error, and the Spearman rank correlation of predictions with true finals (what a scheduler
needs: it compares trials), without and with the guard.

Sources: `digits` and `diabetes` — the experiments' configurations trained in this process for
the full epochs (a fifo sweep: Optuna's RandomSampler over the search space), true final = the
observed val_loss of the last epoch — or the curves of search_efficiency's fifo sweeps
(`--from-sweeps`: benchmarks/results/curves_<bench>.json); and `synthetic` (tuneloop.tune.synthetic,
true final = the noise-free loss). Run: `.venv/bin/python benchmarks/prediction_quality.py`
(about 3 min on 2 cores); writes benchmarks/results/prediction_quality.csv
(`_sweeps.csv` with `--from-sweeps`).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
EXPERIMENTS = {"digits": "digits_mlp.yaml", "diabetes": "diabetes_mlp.yaml"}
CUTS = (10, 20, 30)


def trained_curves(bench: str, n: int, epochs: int, seed: int) -> list[list[float]]:
    """Val-loss curves of `n` random configurations of the experiment, each trained `epochs` epochs."""
    import optuna
    import torch

    from tuneloop.training.build import build_run
    from tuneloop.callbacks import TrainingCallback
    from tuneloop.config import RunConfig, load_experiment
    from tuneloop.config.search_space import apply_params, to_optuna

    overrides = [f"run.epochs={epochs}", "run.checkpoint_config.enabled=false",
                 "run.early_stopping_config.enabled=false", "run.wandb_config.enabled=false"]
    if bench == "digits":
        overrides.append(f"run.scheduler_config.T_max={epochs}")
    cfg = load_experiment(REPO / "experiments" / EXPERIMENTS[bench], overrides)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    distributions = to_optuna(cfg.sweep.search_space)
    base = cfg.run.model_dump(mode="json", by_alias=True)
    curves = []
    for _ in range(n):
        trial = study.ask(distributions)
        run = RunConfig.model_validate(apply_params(base, trial.params))
        losses = []

        class Keep(TrainingCallback):
            """Keeps each epoch's val_loss."""

            priority = 99

            def on_val_end(self, trainer, *, val_loss, **kwargs):
                """Keep the epoch's val_loss."""
                losses.append(float(val_loss))

        parts = build_run(run, device=torch.device("cpu"), extra_callbacks=[Keep()])
        parts.trainer.train(parts.train_loader, parts.val_loader, run.epochs)
        study.tell(trial, losses[-1] if losses and math.isfinite(losses[-1]) else None,
                   state=optuna.trial.TrialState.COMPLETE if losses and math.isfinite(losses[-1])
                   else optuna.trial.TrialState.FAIL)
        curves.append(losses)
    return curves


def synthetic_curves(n: int, epochs: int, fidelity: float, noise: float, seed: int):
    """(observed curves, noise-free finals) of `n` random configurations of the synthetic family."""
    from tuneloop.tune.synthetic import observed_curve, true_final

    rng = np.random.default_rng(seed)
    points = rng.random((n, 2))
    curves = [list(observed_curve(float(x1), float(x2), epochs, fidelity, noise, seed)) for x1, x2 in points]
    finals = [float(true_final(x1, x2, epochs, fidelity)) for x1, x2 in points]
    return curves, finals


def evaluate(source: str, curves, finals, epochs: int) -> list[dict]:
    """Error rows per (cut, method, guard)."""
    from scipy.stats import spearmanr

    from tuneloop.curves import METHODS, fallback_loss, predict_final

    rows = []
    keep = [i for i, (c, f) in enumerate(zip(curves, finals)) if len(c) == epochs and math.isfinite(f)]
    for cut in CUTS:
        for method in METHODS:
            for guard in (False, True):
                if method == "last" and guard:
                    continue
                predictions, failed, started = [], 0, time.perf_counter()
                for i in keep:
                    history = curves[i][:cut]
                    try:
                        predictions.append(predict_final(range(cut), history, epochs - 1, method, guard=guard))
                    except ValueError:  # an unguarded fit that failed: the seed's fallback, the last loss
                        failed += 1
                        predictions.append(fallback_loss(history[-1:]))
                cost = (time.perf_counter() - started) / max(1, len(keep)) * 1e3
                truth = np.array([finals[i] for i in keep])
                predicted = np.array(predictions)
                errors = np.abs(predicted - truth) / np.abs(truth)
                errors[~np.isfinite(errors)] = np.inf
                rows.append({"source": source, "curves": len(keep), "cut": cut, "method": method,
                             "guard": guard, "median_rel_error": float(np.median(errors)),
                             "p90_rel_error": float(np.quantile(errors, 0.9)),
                             "spearman": float(spearmanr(np.nan_to_num(predicted, nan=1e9, posinf=1e9), truth)[0]),
                             "failed_fits": failed, "ms_per_fit": cost})
    return rows


def print_rows(rows: list[dict]) -> None:
    print(f"{'source':<10} {'cut':>3} {'method':<20} {'guard':<5} {'median err':>10} {'p90 err':>8} "
          f"{'spearman':>8} {'failed':>6} {'ms/fit':>6}")
    for r in rows:
        print(f"{r['source']:<10} {r['cut']:>3} {r['method']:<20} {str(r['guard']):<5} {r['median_rel_error']:>10.4f} "
              f"{r['p90_rel_error']:>8.4f} {r['spearman']:>8.3f} {r['failed_fits']:>6} {r['ms_per_fit']:>6.2f}")


def summary(rows: list[dict]) -> None:
    """The most accurate guarded predictor per source (mean of the median errors over the cuts)."""
    print("\nmean over cuts 10/20/30 of the median relative error (guarded fits; `last` has no guard):")
    sources = list(dict.fromkeys(r["source"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    print(f"{'method':<20} " + " ".join(f"{s:>10}" for s in sources) + f" {'all':>10}")
    for method in methods:
        values = []
        for source in sources:
            picked = [r["median_rel_error"] for r in rows if r["source"] == source and r["method"] == method
                      and (r["guard"] or method == "last")]
            values.append(float(np.mean(picked)))
        print(f"{method:<20} " + " ".join(f"{v:>10.4f}" for v in values) + f" {np.mean(values):>10.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", nargs="+", default=["digits", "diabetes", "synthetic"],
                        choices=["digits", "diabetes", "synthetic"])
    parser.add_argument("--curves", type=int, default=32, help="trained curves per real source")
    parser.add_argument("--synthetic-curves", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fidelity", type=float, default=0.5)
    parser.add_argument("--noise", type=float, default=0.02)
    parser.add_argument("--from-sweeps", action="store_true",
                        help="real curves from benchmarks/results/curves_<bench>.json (search_efficiency's fifo sweeps)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("WANDB_MODE", "disabled")
    print(f"machine: {os.cpu_count()} CPU cores, {platform.machine()}, torch {torch.__version__}, "
          f"Python {platform.python_version()}", flush=True)
    rows = []
    for source in args.sources:
        started = time.perf_counter()
        if source == "synthetic":
            curves, finals = synthetic_curves(args.synthetic_curves, args.epochs, args.fidelity, args.noise, args.seed)
        else:
            if args.from_sweeps:
                curves = json.loads((RESULTS / f"curves_{source}.json").read_text())["curves"]
            else:
                curves = trained_curves(source, args.curves, args.epochs, args.seed)
            finals = [c[-1] if c else math.nan for c in curves]
        print(f"{source}: {len(curves)} curves ({time.perf_counter() - started:.1f} s)", flush=True)
        rows += evaluate(source, curves, finals, args.epochs)
    print_rows(rows)
    summary(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "prediction_quality_sweeps.csv" if args.from_sweeps else "prediction_quality.csv"
    with (RESULTS / name).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows([{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows])


if __name__ == "__main__":
    main()
