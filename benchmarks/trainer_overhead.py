"""Trainer overhead (CPU): time per epoch of the Trainer against a bare loop over the same batches.

Case 1, the digits MLP (hidden 128, 2 layers, dropout 0.1), AdamW, batch 128:
  (a)  a bare hand-written PyTorch loop over the same `TensorBatches` batches, with the per-epoch
       loss bookkeeping a researcher would write (loss summed on the device, read once per epoch),
  (b)  the tuneloop Trainer with no callbacks,
  (c)  the Trainer with all nine built-ins minus W&B (Pruner with a no-op report, Checkpoint saving
       every epoch into a temporary directory),
  (c') the same without Checkpoint.

Case 2, the default experiment (experiments/digits_mlp.yaml) as a trial builds it: `build_run` on
its `run` section (its model, optimizer, scheduler, batch size, metrics, every built-in it enables,
a staging checkpoint directory with its checkpoint period), plus the Pruner with a no-op report;
W&B and the trial's metrics.csv are left out:
  (d)  a bare loop over the very same loaders, model, optimizer and scheduler, doing what the recipe
       needs by hand (optimizer.train()/eval() around validation for SPlus, scheduler.step()),
  (e)  the Trainer of that trial, `run.epochs` epochs per run (its checkpoints written in the
       background, as in a trial on local storage),
  (e') the same without its checkpoints: what (e) costs beyond the checkpoint.

(a') and (d') are the bare loops run a second time in each round: their ratios to (a) and (d) show
how far this machine's noise alone moves a ratio (on a shared 2-core VM, their quartiles can span
±10%: read (b), (c') and (e) against them).

As ms/epoch and as ratios to the case's bare loop. The variants run interleaved (one run of each
per round, so drift hits all alike; between runs, garbage collected and files synced) after a warm-up round; reported
are the median time per epoch, the median and quartiles of the per-round ratios. Targets: (b) <= 1.03, (c') <= 1.05, (e) <= 1.05 ((c) is for
reference).

Run: `.venv/bin/python benchmarks/trainer_overhead.py [--epochs 20 --repeats 9 --threads 1 --clock wall]`.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from tuneloop.callbacks import (CheckpointCallback, EarlyStoppingCallback, GradientMonitorCallback,
                                LossPredictionCallback, NaNDetectionCallback, OptimizerModeCallback,
                                OverfitDetectionCallback, PrunerCallback)
from tuneloop.config.loading import load_experiment
from tuneloop.training.build import build_run
from tuneloop.training.data import make_loader
from tuneloop.metrics import accuracy
from tuneloop.recipes.digits import MLP, load_data
from tuneloop.trainer import Trainer

DATA = None
clock = time.perf_counter  # --clock cpu: time.process_time (this process's CPU time, for a busy machine)
EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "digits_mlp.yaml"


def parts(seed=0):
    global DATA
    if DATA is None:
        DATA = load_data()
    train_set, val_set = DATA
    torch.manual_seed(seed)
    model = MLP(hidden=128, layers=2, dropout=0.1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return (model, optimizer, torch.nn.CrossEntropyLoss(), make_loader(train_set, 128, True, seed, "cpu"),
            make_loader(val_set, 1024, False, seed, "cpu"))


def bare_loop(model, optimizer, scheduler, criterion, metrics: list, train, val, epochs: int) -> float:
    """What a researcher writes by hand: loss summed on the device and read once per epoch, the
    metrics averaged over the validation set, the optimizer's own train/eval switch where it has one
    (SPlus keeps an EMA of the weights for evaluation), the schedule stepped per epoch. Seconds/epoch."""
    switches = hasattr(optimizer, "train")
    history = []
    started = clock()
    for epoch in range(epochs):
        model.train()
        if switches:
            optimizer.train()
        train.set_epoch(epoch)
        total, count = torch.zeros(()), 0
        for x, y in train:
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(y)
            count += len(y)
        train_loss = float(total / count)
        model.eval()
        if switches:
            optimizer.eval()
        with torch.no_grad():
            sums, n = torch.zeros(1 + len(metrics)), 0
            for x, y in val:
                out = model(x)
                sums += torch.stack([criterion(out, y), *(fn(out, y) for fn in metrics)]) * len(y)
                n += len(y)
            val_loss, *values = (sums / n).tolist()
        history.append((epoch, train_loss, val_loss, values))
        if scheduler is not None:
            scheduler.step()
    elapsed = clock() - started
    assert len(history) == epochs and all(v == v for _, _, v, _ in history)
    return elapsed / epochs


def bare(epochs: int) -> float:
    """Case 1 by hand, over the same batches."""
    model, optimizer, criterion, train, val = parts()
    return bare_loop(model, optimizer, None, criterion, [accuracy], train, val, epochs)


def with_trainer(epochs: int, callbacks_factory) -> float:
    with tempfile.TemporaryDirectory(prefix="tuneloop-bench-") as directory:
        model, optimizer, criterion, train, val = parts()
        trainer = Trainer(model, optimizer, None, criterion, callbacks_factory(epochs, directory),
                          metrics={"accuracy": accuracy})
        started = clock()
        trainer.train(train, val, epochs)
        return (clock() - started) / epochs


def no_callbacks(epochs, directory):
    return []


def all_builtins(checkpoint: bool):
    def factory(epochs, directory):
        callbacks = [NaNDetectionCallback(), OptimizerModeCallback(), GradientMonitorCallback(),
                     LossPredictionCallback(epochs), OverfitDetectionCallback(), EarlyStoppingCallback(),
                     PrunerCallback(report=lambda metrics, checkpoint_dir: None)]
        if checkpoint:
            callbacks.append(CheckpointCallback(directory, save_every_n_epochs=1, keep_last_k=3))
        return callbacks
    return factory


def default_run(checkpoint_dir=None, extra_callbacks=()):
    """The default experiment's run as a trial builds it (W&B off), on the CPU: on local storage a
    trial writes its checkpoints in the background into the directories Tune persists its reports as
    (`tuneloop.tune.trial.write_checkpoints_in_place`); here `checkpoint_dir/tune/checkpoint_<N>`."""
    run = load_experiment(EXPERIMENT, ["run.wandb_config.enabled=false"]).run
    parts = build_run(run, device=torch.device("cpu"), checkpoint_dir=checkpoint_dir, staging=True,
                      extra_callbacks=list(extra_callbacks))
    if checkpoint_dir is not None:
        destinations = (Path(checkpoint_dir) / "tune" / f"checkpoint_{index:06d}" for index in itertools.count())
        for callback in parts.trainer.callbacks:
            if isinstance(callback, CheckpointCallback):
                callback.publish_to(lambda: next(destinations))
    return parts


def default_bare() -> float:
    """The default experiment's recipe by hand, over the loaders, model and optimizer `build_run` makes."""
    parts = default_run()
    trainer = parts.trainer
    return bare_loop(trainer.model, trainer.optimizer, trainer.scheduler, trainer.criterion,
                     list(trainer.metrics.values()), parts.train_loader, parts.val_loader, parts.config.epochs)


def default_trainer(checkpoints: bool = True) -> float:
    with tempfile.TemporaryDirectory(prefix="tuneloop-bench-") as directory:
        parts = default_run(Path(directory) if checkpoints else None,
                            [PrunerCallback(report=lambda metrics, checkpoint_dir: None)])
        started = clock()
        parts.trainer.train(parts.train_loader, parts.val_loader, parts.config.epochs)
        assert parts.trainer.stop_reason is None
        return (clock() - started) / parts.config.epochs


VARIANTS = {  # short name: its line in the table
    "a": "(a)  bare PyTorch loop", "a'": "(a') (a) again: the noise floor", "b": "(b)  Trainer, no callbacks",
    "c": "(c)  Trainer, 8 built-ins (no W&B)", "c'": "(c') (c) without Checkpoint",
    "d": "(d)  default experiment, bare loop", "e": "(e)  default experiment, Trainer",
    "e'": "(e') (e) without its checkpoints", "d'": "(d') (d) again: the noise floor",
}
TARGETS = "(b) <= 1.03, (c') <= 1.05, (e) <= 1.05"


def variant_runs(epochs: int) -> dict:
    """Each variant by its short name: a run of it, which returns seconds per epoch (case 1: `epochs`
    epochs; case 2: the experiment's)."""
    return {"a": lambda: bare(epochs), "a'": lambda: bare(epochs),
            "b": lambda: with_trainer(epochs, no_callbacks),
            "c": lambda: with_trainer(epochs, all_builtins(True)),
            "c'": lambda: with_trainer(epochs, all_builtins(False)),
            "d": default_bare, "e": default_trainer, "e'": lambda: default_trainer(checkpoints=False),
            "d'": default_bare}


def base_of(name: str) -> str:
    """The bare loop of the variant's case."""
    return "d" if name[0] in "de" else "a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: this process's CPU time, steadier where other work shares the cores")
    args = parser.parse_args()
    global clock
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    variants = variant_runs(args.epochs)
    for run in variants.values():  # warm-up
        run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):  # interleaved, so drift hits every variant alike
        for name, run in variants.items():
            gc.collect()  # a variant's garbage is not collected inside the next one's timing,
            os.sync()  # nor its checkpoint files written back to the disk
            times[name].append(run())
    run = load_experiment(EXPERIMENT).run
    print(f"CPU, {args.threads} thread(s), {args.clock} clock, {args.repeats} interleaved rounds (after a warm-up "
          "round); ratio = median over rounds of variant / the case's bare loop in that round")
    print(f"case 1: digits MLP (hidden 128, 2 layers, batch 128), AdamW, {args.epochs} epochs per run")
    print(f"case 2: {EXPERIMENT.name}: {run.net.rpartition('.')[2]} {run.net_config}, "
          f"{run.optimizer.rpartition('.')[2]}, batch {run.batch_size}, metrics {run.metrics}, checkpoint every "
          f"{run.checkpoint_config.save_every_n_epochs} epochs, {run.epochs} epochs per run")
    print(f"  {'variant':<36} {'median ms/epoch':>15} {'ratio':>8} {'quartiles':>12} {'min ms/epoch':>13}")
    for name, values in times.items():
        base = times[base_of(name)]
        ratios = [v / b for v, b in zip(values, base)]
        low, _, high = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios * 3)
        print(f"  {VARIANTS[name]:<36} {statistics.median(values) * 1000:15.2f} {statistics.median(ratios):8.3f} "
              f"{low:6.3f}-{high:.3f} {min(values) * 1000:13.2f}")
    print(f"  targets: {TARGETS}   ((b), (c), (c') against (a); (e) against (d))")
    print("  (a') and (d') run the bare loops a second time: how far their ratios and quartiles stray from 1.000 is "
          "what this machine's noise alone does to a ratio")
    print("  (c), a checkpoint every epoch, is for reference: benchmarks/checkpoint_overhead.py has the checkpoint "
          "targets")


if __name__ == "__main__":
    main()
