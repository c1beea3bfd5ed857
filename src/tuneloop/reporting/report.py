"""`tuneloop report EXPERIMENT_DIR`: what a sweep found, from the Optuna study and Tune's per-trial
results: trials by state, the best trial and the top-k, parameter importance (Optuna's own),
boundary warnings, and PNG plots in `EXPERIMENT_DIR/report/` (learning curves, optimization
history, importances, parallel coordinates, one slice plot per parameter)."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

from tuneloop.config.errors import UserError
from tuneloop.outcome import finite as _finite
from tuneloop.outcome import outcome, ranked
from tuneloop.storage import TRIAL_ERROR, TRIAL_RESULTS
from tuneloop.config.search_space import short_value

STATES = ("complete", "pruned", "failed", "running")
BOUNDARY = 0.05  # a best value within 5% of a bound (of the range, log scale for log parameters)


def load(directory: Path):
    """(cfg, study, histories) of the sweep in `directory` (its local directory)."""
    from tuneloop.sweep.paths import experiment_storage

    cfg, study = load_study(directory)
    return cfg, study, trial_histories(experiment_storage(cfg), cfg.sweep.metric)


def load_study(directory: Path):
    """(cfg, Optuna study) of the sweep in `directory` (its local directory)."""
    import optuna

    from tuneloop.sweep.paths import optuna_url
    from tuneloop.sweep.resume import load_sweep

    directory = Path(directory).expanduser().resolve()
    cfg = load_sweep(directory)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=cfg.run.name, storage=optuna_url(cfg))
    except KeyError:
        raise UserError("holds no Optuna study yet (the sweep has not started a trial)",
                        key="EXPERIMENT_DIR", value=str(directory)) from None
    return cfg, study


def trial_histories(storage, metric: str) -> dict[str, dict]:
    """Per Tune trial: its result rows, whether it errored, and its state by tuneloop's rule (on
    the sweep's `metric`)."""
    trials = {}
    for name in storage.listdir():
        if not name.startswith("trial_"):
            continue
        files = storage.listdir(name)
        text = storage.read_bytes(f"{name}/{TRIAL_RESULTS}").decode() if TRIAL_RESULTS in files else ""
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        error = TRIAL_ERROR in files
        state = outcome(rows[-1] if rows else None, error, metric=metric)[0]
        trials[name.removeprefix("trial_")] = {"rows": rows, "error": error, "state": state}
    return trials


def summarize(cfg, study, histories: dict, *, done: bool, top_k: int) -> dict:
    """The report's facts as one JSON-able dict."""
    import optuna

    state_names = {optuna.trial.TrialState.COMPLETE: "complete", optuna.trial.TrialState.PRUNED: "pruned",
                   optuna.trial.TrialState.FAIL: "failed", optuna.trial.TrialState.RUNNING: "running",
                   optuna.trial.TrialState.WAITING: "running"}
    counts = {state: 0 for state in STATES}
    for trial in study.trials:
        counts[state_names[trial.state]] += 1
    order = ranked(study.trials, mode=cfg.sweep.mode, state=lambda t: state_names[t.state],
                   value=lambda t: t.value)  # the rule of every view of the sweep (tuneloop.outcome)
    facts = {
        "experiment": cfg.run.name, "metric": cfg.sweep.metric, "mode": cfg.sweep.mode,
        "finished": done and not counts["running"], "trials": counts, "n_trials": len(study.trials),
        "best": _trial_facts(order[0]) if order else None,
        "top_k": [_trial_facts(t) for t in order[:top_k]],
        "importance": None, "boundary_warnings": [], "tune_trials": len(histories),
    }
    if len(order) >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)  # the same numbers each time
                facts["importance"] = {k: float(v) for k, v in
                                       optuna.importance.get_param_importances(study, evaluator=evaluator).items()}
            except (RuntimeError, ValueError) as exc:  # e.g. a parameter that never varied
                facts["importance_error"] = str(exc)
    if order:
        facts["boundary_warnings"] = boundary_warnings(order[0])
    return facts


def boundary_warnings(trial) -> list[str]:
    """A best value within 5% of its search range's bound: the optimum may lie outside it."""
    out = []
    for name, value in trial.params.items():
        distribution = trial.distributions[name]
        low, high = getattr(distribution, "low", None), getattr(distribution, "high", None)
        if low is None or high is None or high <= low:
            continue
        log = getattr(distribution, "log", False)
        scale = (lambda x: math.log(x)) if log else (lambda x: x)
        position = (scale(value) - scale(low)) / (scale(high) - scale(low))
        if position <= BOUNDARY or position >= 1 - BOUNDARY:
            bound = "low" if position <= BOUNDARY else "high"
            out.append(f"{name}={value:.4g} is within {BOUNDARY:.0%} of its {bound} bound "
                       f"({low:g}..{high:g}{', log scale' if log else ''}): widen the range")
    return out


def _trial_facts(trial) -> dict:
    return {"number": trial.number, "value": trial.value, "params": trial.params}


def plot(cfg, study, histories: dict, best_value: float | None, out: Path) -> list[Path]:
    """The PNG plots; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    out.mkdir(parents=True, exist_ok=True)
    written = []

    def save(name: str, axes_or_figure) -> None:
        figure = getattr(axes_or_figure, "figure", axes_or_figure)
        if hasattr(axes_or_figure, "flat"):  # an array of axes (slice and parallel plots)
            figure = axes_or_figure.flat[0].figure
        figure.tight_layout()
        figure.savefig(out / name, dpi=110)
        plt.close(figure)
        written.append(out / name)

    figure, axes = plt.subplots(figsize=(8, 5))
    style = {"complete": ("tab:blue", 1.2, 0.8), "pruned": ("tab:gray", 0.8, 0.5),
             "failed": ("tab:red", 0.8, 0.7), "running": ("tab:orange", 0.8, 0.7)}
    best_id = None
    if best_value is not None:  # the Tune trial whose last value is the study's best
        for trial_id, history in histories.items():
            rows = history["rows"]
            if rows and rows[-1].get(cfg.sweep.metric) == best_value:
                best_id = trial_id
    seen = set()
    for trial_id, history in sorted(histories.items()):
        rows = [r for r in history["rows"] if _finite(r.get("val_loss"))]
        if not rows:
            continue
        color, width, alpha = style.get(history["state"], style["running"])
        label = history["state"] if history["state"] not in seen else None
        seen.add(history["state"])
        axes.plot([r["epoch"] for r in rows], [r["val_loss"] for r in rows], color=color, linewidth=width,
                  alpha=alpha, label=label)
        if history["state"] == "failed":
            axes.plot(rows[-1]["epoch"], rows[-1]["val_loss"], "x", color=color)
    if best_id is not None:
        rows = [r for r in histories[best_id]["rows"] if _finite(r.get("val_loss"))]
        axes.plot([r["epoch"] for r in rows], [r["val_loss"] for r in rows], color="black", linewidth=2.5,
                  label=f"best (trial {best_id})")
    axes.set(xlabel="epoch", ylabel="val_loss", title=f"{cfg.run.name}: learning curves", yscale="log")
    axes.legend()
    save("learning_curves.png", figure)

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's matplotlib plots are marked experimental
        if complete:
            save("optimization_history.png", ovm.plot_optimization_history(study))
            save("parallel_coordinate.png", ovm.plot_parallel_coordinate(study))
            for name in sorted({p for t in complete for p in t.params}):
                save(f"slice_{name.replace('.', '_')}.png", ovm.plot_slice(study, params=[name]))
        if len(complete) >= 2:
            try:
                save("param_importances.png", ovm.plot_param_importances(
                    study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)))
            except (RuntimeError, ValueError):
                pass  # said in the summary (importance_error)
    return written


def report(directory: Path, *, top_k: int = 5, as_json: bool = False) -> int:
    from tuneloop.sweep.paths import DONE_FILE

    cfg, study, histories = load(directory)
    directory = Path(directory).expanduser().resolve()
    facts = summarize(cfg, study, histories, done=(directory / DONE_FILE).is_file(), top_k=top_k)
    best_value = facts["best"]["value"] if facts["best"] else None
    facts["plots"] = [str(p) for p in plot(cfg, study, histories, best_value, directory / "report")]
    if as_json:
        print(json.dumps(facts, indent=2))
        return 0
    print(f"sweep {facts['experiment']}: {facts['n_trials']} trials, "
          + ", ".join(f"{n} {s}" for s, n in facts["trials"].items() if n or s != "running")
          + ("" if facts["finished"] else "  (not finished: interrupted or still running; "
             f"`tuneloop resume {directory}` continues it)"))
    best = facts["best"]
    if best:
        print(f"best: trial #{best['number']} {facts['metric']}={best['value']:.6g} "
              + " ".join(f"{k}={short_value(v)}" for k, v in best["params"].items()))
        print(f"top {len(facts['top_k'])} by {facts['metric']} ({facts['mode']}):")
        for trial in facts["top_k"]:
            print(f"  #{trial['number']:<4} {trial['value']:.6g}  "
                  + " ".join(f"{k}={short_value(v)}" for k, v in trial["params"].items()))
    else:
        print("no trial completed yet")
    if facts["importance"]:
        print("parameter importance (optuna.importance, fANOVA):")
        for name, value in facts["importance"].items():
            print(f"  {name:<32} {value:.3f}")
    for warning in facts["boundary_warnings"]:
        print(f"warning: {warning}")
    print(f"plots: {directory / 'report'}/ ({len(facts['plots'])} PNG files)")
    return 0
