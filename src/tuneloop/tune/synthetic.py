"""A synthetic learning-curve bench: scheduler behaviour measured in seconds, without training.

Configurations are points `(x1, x2)` of the unit square. Each one has a noise-free val-loss
curve, a power law with a floor,

    L(t) = c + a·(1 + t/(β·τ))^(-β),   t = epoch + 1,

(β → ∞ gives the shifted exponential `c + a·exp(-t/τ)`), whose floor `c` grows with the
distance from the optimum (0.3, 0.6). `fidelity` ∈ [0, 1] sets how well early losses rank final
ones: at 1 every curve has the same shape (only `c` differs: the ranking never changes); below
1 good configurations learn slower (larger τ) and amplitude, rate and shape vary smoothly over
the square, so curves cross (the Spearman correlation of the loss at epoch 3 with the final loss,
over a grid of the square at 20 epochs: 1 at fidelity 1, 0.56 at 0.75, 0.20 at 0.5). The
observed losses carry multiplicative Gaussian noise (`noise`), deterministic per (config, seed).

`synthetic_trial` is a Tune function trainable that reports one row per epoch, without sleeping,
in the shape tuneloop's trials report (`epoch`, `val_loss`, `predicted_final_loss` of the seed's
LossPredictionCallback, `trial_done`); `run_synthetic_sweep` runs it with a scheduler built by
`tuneloop.tune.schedulers.build_scheduler` and Optuna's TPE behind `TruthfulOptunaSearch`, and
returns the regret (true final loss of the configuration the sweep picks minus the family's best)
against the epochs spent.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ray.tune import Callback

OPTIMUM = (0.3, 0.6)


def _smooth(x1, x2):
    """Two smooth functions of the square with values in [0, 1]: where shapes and rates vary."""
    w = 0.5 + 0.5 * np.sin(5.3 * x1 + 3.1 * x1 * x2 + 1.0)
    v = 0.5 + 0.5 * np.cos(4.7 * x2 - 2.3 * x1)
    return w, v


def curve_parameters(x1, x2, epochs: int, fidelity: float) -> dict:
    """(c, a, τ, β) of the curve of configuration (x1, x2); numpy arrays broadcast."""
    if not 0.0 <= fidelity <= 1.0:
        raise ValueError(f"0 <= fidelity <= 1 must hold, but got fidelity={fidelity}")
    x1, x2 = np.asarray(x1, dtype=float), np.asarray(x2, dtype=float)
    q = ((x1 - OPTIMUM[0]) ** 2 + (x2 - OPTIMUM[1]) ** 2) / 0.85  # 0 at the optimum, 1 at the far corner
    w, v = _smooth(x1, x2)
    s = 1.0 - fidelity
    return {"c": 0.1 + 0.4 * q,
            "a": 2.0 * np.exp(s * 1.2 * (v - 0.5)),
            "tau": epochs / 6.0 * np.exp(s * (2.0 * (0.5 - q) + 0.8 * (w - 0.5))),
            "beta": 1.5 * np.exp(s * 1.5 * (v - 0.5))}


def true_curve(x1, x2, epochs: int, fidelity: float) -> np.ndarray:
    """The noise-free losses at epochs 0 … epochs-1 (last axis)."""
    p = curve_parameters(x1, x2, epochs, fidelity)
    t = np.arange(1, epochs + 1, dtype=float)
    expand = {k: np.asarray(val)[..., None] for k, val in p.items()}
    return expand["c"] + expand["a"] * (1.0 + t / (expand["beta"] * expand["tau"])) ** (-expand["beta"])


def true_final(x1, x2, epochs: int, fidelity: float):
    """The noise-free loss at the last epoch."""
    return true_curve(x1, x2, epochs, fidelity)[..., -1]


def best_final(epochs: int, fidelity: float, resolution: int = 401) -> float:
    """The family's best noise-free final loss (a dense grid of the square)."""
    grid = np.linspace(0.0, 1.0, resolution)
    x1, x2 = np.meshgrid(grid, grid)
    return float(true_final(x1.ravel(), x2.ravel(), epochs, fidelity).min())


def observed_curve(x1: float, x2: float, epochs: int, fidelity: float, noise: float, seed: int) -> np.ndarray:
    """The noisy losses a trial of (x1, x2) reports: deterministic per (config, seed)."""
    key = hashlib.sha256(f"{x1!r},{x2!r},{seed}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(key[:8], "little"))
    return true_curve(x1, x2, epochs, fidelity) * (1.0 + noise * rng.standard_normal(epochs))


def synthetic_trial(config: dict, *, epochs: int, fidelity: float, noise: float, seed: int,
                    checkpoints: bool = False) -> None:
    """Report the configuration's observed curve, one row per epoch (continues from a checkpoint;
    `checkpoints`: one per epoch, which a pausing scheduler needs)."""
    from ray import tune

    from tuneloop.callbacks.loss_prediction import LossPredictionCallback

    x1, x2 = float(config["x1"]), float(config["x2"])
    losses = observed_curve(x1, x2, epochs, fidelity, noise, seed)
    final = float(true_final(x1, x2, epochs, fidelity))
    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # a paused (HyperBand) trial continues where it was
        with checkpoint.as_directory() as directory:
            start = json.loads(Path(directory, "epoch.json").read_text())["next"]
    predictor = LossPredictionCallback(max_epochs=epochs)
    carrier = type("Carrier", (), {"_loss_prediction": None})()
    for epoch in range(epochs):  # the predictor sees the whole history, also after a resume
        predictor.on_val_end(carrier, epoch=epoch, val_loss=float(losses[epoch]), metrics={})
        if epoch < start:
            continue
        done = epoch == epochs - 1
        row = {"epoch": epoch, "val_loss": float(losses[epoch]), "true_final": final, "trial_done": done,
               "done_reason": "complete" if done else "", "predicted_final_loss": (
                   10 ** -carrier._loss_prediction if carrier._loss_prediction is not None else None)}
        checkpoint_out = scratch = None
        if checkpoints:
            scratch = tempfile.mkdtemp(prefix="tlsyn-")
            Path(scratch, "epoch.json").write_text(json.dumps({"next": epoch + 1}))
            checkpoint_out = tune.Checkpoint.from_directory(scratch)
        try:  # tune.report copies the checkpoint into the trial's storage before it returns (or stops)
            tune.report({k: v for k, v in row.items() if v is not None}, checkpoint=checkpoint_out)
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)


@dataclass
class SyntheticOutcome:
    """One synthetic sweep: epochs spent, the picked configuration, regret along the way."""

    scheduler: str
    seed: int
    epochs_spent: int
    best_observed: float  # the picked configuration's observed final val_loss
    best_true: float  # its noise-free final loss
    optimum: float  # the family's best noise-free final loss
    completed: int
    trials: int
    wall_s: float
    trace: list[tuple[int, float]] = field(default_factory=list)  # (epochs spent, regret) at each new pick

    @property
    def regret(self) -> float:
        return self.best_true - self.optimum

    def regret_at(self, budget: int) -> float:
        """The regret after at most `budget` epochs (inf before the first completed trial)."""
        value = math.inf
        for spent, regret in self.trace:
            if spent > budget:
                break
            value = regret
        return value


class SyntheticRecorder(Callback):
    """Counts the epochs reported and the completed trials' finals, in the order Tune sees them."""

    def __init__(self):
        self.events: list[tuple[str, int, float, float, bool]] = []

    def on_trial_result(self, iteration, trials, trial, result, **info):
        """Record (trial, epoch, val_loss, true final, done) of every reported epoch."""
        self.events.append((trial.trial_id, int(result["epoch"]), float(result["val_loss"]),
                            float(result["true_final"]), bool(result.get("trial_done"))))


def run_synthetic_sweep(scheduler: str, scheduler_kwargs: dict | None = None, *, num_samples: int = 32,
                        epochs: int = 40, fidelity: float = 0.5, noise: float = 0.02, seed: int = 0,
                        concurrency: int = 1, sampler: str = "TPESampler") -> SyntheticOutcome:
    """One sweep of the synthetic trainable on the running Ray (`ray.init` first) with
    `build_scheduler(scheduler, scheduler_kwargs)` and an Optuna sampler seeded with `seed`."""
    import optuna
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from tuneloop.storage import Storage, SweepPlace
    from tuneloop.tune.schedulers import build_scheduler
    from tuneloop.tune.searcher import TruthfulOptunaSearch
    from tuneloop.tune.session import TUNE_SETTINGS, apply_tune_settings

    # a bench of thousands of results: Tune's snapshot once a minute, not after every result
    apply_tune_settings({**TUNE_SETTINGS, "TUNE_GLOBAL_CHECKPOINT_S": "60"})
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directory = Path(tempfile.mkdtemp(prefix=f"tlsyn-{scheduler}-"))
    try:
        # the stateful schedulers keep their state files in the bench's directory
        place = SweepPlace(directory, Storage.local(directory), f"sqlite:///{directory}/optuna.db")
        space = {name: optuna.distributions.FloatDistribution(0.0, 1.0) for name in ("x1", "x2")}
        sampler_kwargs = {"seed": seed} if sampler != "GridSampler" else {}
        searcher = TruthfulOptunaSearch(space, metric="val_loss", mode="min",
                                        sampler=getattr(optuna.samplers, sampler)(**sampler_kwargs),
                                        study_name="synthetic", place=place)
        scheduler_object = build_scheduler(scheduler, dict(scheduler_kwargs or {}), metric="val_loss", mode="min",
                                           epochs=epochs)
        if callable(getattr(scheduler_object, "bind", None)):
            scheduler_object.bind(place)
        recorder = SyntheticRecorder()
        trainable = tune.with_resources(tune.with_parameters(synthetic_trial, epochs=epochs, fidelity=fidelity,
                                                             noise=noise, seed=seed,
                                                             checkpoints=scheduler == "hyperband"), {"cpu": 1})
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=num_samples, reuse_actors=True,
                                        max_concurrent_trials=concurrency,
                                        scheduler=scheduler_object),
            run_config=tune.RunConfig(name="synthetic", storage_path=str(directory),
                                      # result.json, which Tune's ResultGrid reads at the end (else it warns per trial)
                                      callbacks=[recorder, JsonLoggerCallback()],
                                      verbose=0, checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))
        started = time.perf_counter()
        grid = tuner.fit()
        wall = time.perf_counter() - started
        if grid.errors:
            raise RuntimeError(f"synthetic trials failed: {grid.errors[0]}")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return summarize_events(recorder.events, scheduler=scheduler, seed=seed, num_samples=num_samples,
                            optimum=best_final(epochs, fidelity), wall_s=wall)


def summarize_events(events, *, scheduler: str, seed: int, num_samples: int, optimum: float,
                     wall_s: float) -> SyntheticOutcome:
    """Epochs spent and the regret trace from the recorder's events (trial, epoch, loss, true final, done)."""
    seen: set[tuple[str, int]] = set()
    spent, best = 0, None  # best: (observed final, true final) of the pick so far
    trace, completed = [], 0
    for trial_id, epoch, loss, final, done in events:
        if (trial_id, epoch) not in seen:  # a re-run epoch (after a pause) is not spent twice
            seen.add((trial_id, epoch))
            spent += 1
        if done:
            completed += 1
            if best is None or loss < best[0]:
                best = (loss, final)
                trace.append((spent, final - optimum))
    if best is None:
        best = (math.inf, math.inf)
    return SyntheticOutcome(scheduler=scheduler, seed=seed, epochs_spent=spent, best_observed=best[0],
                            best_true=best[1], optimum=optimum, completed=completed, trials=num_samples,
                            wall_s=wall_s, trace=trace)
