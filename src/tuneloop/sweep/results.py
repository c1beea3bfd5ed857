"""A sweep's results: one row per trial from Tune (`results.csv`), the best trial as a complete
experiment file (`best.yaml`), the summary table, and each trial's history without repeated epochs."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from tuneloop._io import atomic_write_text
from tuneloop.config.schema import ExperimentConfig
from tuneloop.config.search_space import apply_params, short_value
from tuneloop.config.yaml12 import dump_yaml
from tuneloop.outcome import RUNNING, best, finite, outcome
from tuneloop.storage import TRIAL_PROGRESS, TRIAL_RESULTS, Storage
from tuneloop.sweep.paths import BEST_FILE, RESULTS_FILE

HISTORY_REWINDS = ("pbt",)  # a trial's epochs may legitimately go back (PBT's clones continue another's)


def trial_state(cfg: ExperimentConfig, result: dict | None, error: bool) -> str:
    """complete / pruned / failed on the sweep's metric, by the rule the Optuna study is told."""
    return outcome(result, error, metric=cfg.sweep.metric)[0]


@dataclass
class TrialRow:
    trial_id: str
    state: str
    epochs: int
    best_val_loss: float
    last_metric: float
    config: dict
    metrics: dict = field(default_factory=dict)  # last_<m> and <m>_at_best of every reported metric


def metric_columns(cfg: ExperimentConfig) -> list[str]:
    """results.csv's columns of reported metrics: `last_<m>` (the last epoch's) and `<m>_at_best`
    (at the trial's best epoch by sweep.metric and mode), for val_loss, train_loss and each val_<metric>."""
    keys = cfg.run.metric_keys()
    return [f"last_{m}" for m in keys] + [f"{m}_at_best" for m in keys]


def trial_metrics(cfg: ExperimentConfig, epochs: list[dict]) -> dict:
    """`metric_columns` of one trial from its epochs (NaN where it reported none)."""
    keys = cfg.run.metric_keys()
    last = epochs[-1] if epochs else {}
    sign = 1 if cfg.sweep.mode == "min" else -1
    scored = [row for row in epochs if finite(row.get(cfg.sweep.metric))]
    at_best = min(scored, key=lambda row: sign * float(row[cfg.sweep.metric])) if scored else {}
    values = {f"last_{m}": last.get(m, math.nan) for m in keys}
    values.update({f"{m}_at_best": at_best.get(m, math.nan) for m in keys})
    return values


def tidy_histories(storage: Storage) -> None:
    """Drop repeated epochs from each trial's result.json and progress.csv (keeping the last row).

    After a driver kill, Tune's snapshot can lag the rows already written: the restored trial runs
    the epoch after its last checkpoint again, with identical losses when resume is exact.
    """
    for trial_dir in storage.listdir():
        if not trial_dir.startswith("trial_"):
            continue
        names = storage.listdir(trial_dir)
        if TRIAL_RESULTS in names:
            rows = trial_history(storage, trial_dir)
            kept = _last_per_epoch(rows, lambda row: row.get("epoch"))
            if len(kept) != len(rows):
                storage.write_bytes(f"{trial_dir}/{TRIAL_RESULTS}",
                                    "".join(json.dumps(row) + "\n" for row in kept).encode())
        if TRIAL_PROGRESS in names:
            text = storage.read_bytes(f"{trial_dir}/{TRIAL_PROGRESS}").decode()
            if text.strip():
                reader = csv.DictReader(io.StringIO(text))
                rows = list(reader)
                kept = _last_per_epoch(rows, lambda row: row.get("epoch"))
                if len(kept) != len(rows):
                    buffer = io.StringIO()
                    writer = csv.DictWriter(buffer, fieldnames=reader.fieldnames, lineterminator="\n")
                    writer.writeheader()
                    writer.writerows(kept)
                    storage.write_bytes(f"{trial_dir}/{TRIAL_PROGRESS}", buffer.getvalue().encode())


def drop_superseded(storage: Storage, trials) -> list[str]:
    """Delete the trial directories that none of Tune's `trials` owns; returns their names.

    A trial that started after the experiment snapshot a resume restored is unknown to Tune
    after the resume: its Optuna trial is taken over by a new trial, which trains its
    configuration again (`tuneloop.tune.searcher`). What it left (metrics.csv, checkpoints, no
    result.json) is a partial duplicate that reports and results must not count. Call it only
    once every trial ended.
    """
    from tuneloop.tune._compat import trial_storage_of

    if not trials:  # Tune's list of trials is missing: nothing can be told apart
        return []
    owned = {trial_storage_of(trial)[1].rstrip("/").rpartition("/")[2] for trial in trials}
    superseded = [name for name in storage.listdir() if name.startswith("trial_") and name not in owned]
    for name in superseded:
        storage.delete_dir(name)
    return superseded


def _last_per_epoch(rows: list, epoch_of) -> list:
    latest = {}
    for index, row in enumerate(rows):
        latest[epoch_of(row)] = index
    return [rows[i] for i in sorted(latest.values())]


UNFINISHED = ("PENDING", "RUNNING", "PAUSED")  # Tune trial statuses of an interrupted sweep


def trial_history(storage: Storage, trial_dir: str) -> list[dict]:
    """The results a trial reported, in order (its result.json; none where it has none yet)."""
    try:
        text = storage.read_bytes(f"{trial_dir}/{TRIAL_RESULTS}").decode()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def summarize(cfg: ExperimentConfig, results, trial_ends, storage: Storage) -> list[TrialRow]:
    """One row per trial of Tune's ResultGrid `results` (state `running` for a trial an interrupt
    left unfinished: Tune's status says so, or `trial_ends`, a TrialEnds, knows it never ended).
    Each trial's history is read from `storage` one trial at a time (the ResultGrid holds none:
    `tuneloop.tune._compat.results_without_histories`)."""
    cut = trial_ends.cut_short()
    unfinished = {t.trial_id for t in trial_ends.trials if t.status in UNFINISHED or t.trial_id in cut}
    configs = {t.trial_id: t.config for t in trial_ends.trials}  # a trial that never reported has no result config
    rows = []
    for result in results:
        trial_dir = Path(result.path).name
        epochs = trial_history(storage, trial_dir)
        if not any("val_loss" in row for row in epochs):
            epochs = []
        if cfg.sweep.scheduler.name not in HISTORY_REWINDS:  # an epoch run again after a resume counts once
            epochs = _last_per_epoch(epochs, lambda row: row.get("epoch"))
        losses = [row.get("val_loss", math.nan) for row in epochs]
        finite_losses = [v for v in losses if finite(v)]
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or trial_dir.removeprefix("trial_")
        # A trial that neither reported nor raised never got going: an interrupt stopped it as it
        # started (Tune then marks it TERMINATED), so it is unfinished, not failed.
        never_reported = "epoch" not in metrics and result.error is None  # (Tune's default result: its id)
        rows.append(TrialRow(
            trial_id=trial_id,
            state=RUNNING if trial_id in unfinished or never_reported
            else trial_state(cfg, metrics, result.error is not None),
            epochs=len(losses), best_val_loss=min(finite_losses) if finite_losses else math.inf,
            last_metric=metrics.get(cfg.sweep.metric, math.nan),
            config=dict(result.config or configs.get(trial_id) or {}), metrics=trial_metrics(cfg, epochs)))
    return rows


def best_row(cfg: ExperimentConfig, rows: list[TrialRow]) -> TrialRow | None:
    """The best trial by `tuneloop.outcome.best`: the complete one with the best last value of the
    sweep metric (None when no trial completed)."""
    return best(rows, mode=cfg.sweep.mode, state=lambda r: r.state, value=lambda r: r.last_metric)


def write_results(cfg: ExperimentConfig, rows: list[TrialRow], directory: Path) -> TrialRow | None:
    """results.csv (one row per trial) and best.yaml (a complete experiment file for `tuneloop train`)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    keys = list(cfg.sweep.params())
    columns = metric_columns(cfg)
    writer.writerow(["trial_id", "state", "epochs", "best_val_loss", cfg.sweep.metric, *keys, *columns])
    for r in rows:
        writer.writerow([r.trial_id, r.state, r.epochs, r.best_val_loss, r.last_metric,
                         *(r.config.get(k) for k in keys), *(r.metrics.get(c, math.nan) for c in columns)])
    atomic_write_text(directory / RESULTS_FILE, buffer.getvalue())
    best = best_row(cfg, rows)
    if best is not None:
        experiment = cfg.model_dump(mode="json", by_alias=True)
        experiment["run"] = apply_params(experiment["run"], {k: best.config[k] for k in keys if k in best.config})
        header = (f"# Best trial {best.trial_id} of sweep {cfg.run.name}: {cfg.sweep.metric}="
                  f"{best.last_metric:.6g} ({best.state}). Train it: tuneloop train best.yaml\n")
        atomic_write_text(directory / BEST_FILE, header + dump_yaml(experiment))
    return best


def print_table(cfg: ExperimentConfig, rows: list[TrialRow], best: TrialRow | None) -> None:
    keys = list(cfg.sweep.params())
    header = f"{'trial':<12} {'state':<9} {'epochs':>6} {'best val_loss':>13} {cfg.sweep.metric:>13}  config"
    print(header)
    order = sorted(rows, key=lambda r: r.trial_id)
    for r in order:
        config = " ".join(f"{k}={short_value(r.config[k])}" for k in keys if k in r.config)  # a trial's own
        print(f"{r.trial_id:<12} {r.state:<9} {r.epochs:>6} {r.best_val_loss:>13.6g} {r.last_metric:>13.6g}  {config}")
    counts = {s: sum(r.state == s for r in rows) for s in ("complete", "pruned", "failed", "running")}
    if not counts["running"]:
        del counts["running"]
    print(f"{len(rows)} trials: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    if best is not None:
        print(f"best: trial {best.trial_id} {cfg.sweep.metric}={best.last_metric:.6g} "
              + " ".join(f"{k}={short_value(best.config[k])}" for k in keys if k in best.config))
