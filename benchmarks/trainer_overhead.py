"""Trainer overhead on the digits MLP (CPU): time per epoch of

  (a)  a bare hand-written PyTorch loop over the same `TensorBatches` batches, with the per-epoch
       loss bookkeeping a researcher would write (loss summed on the device, read once per epoch),
  (b)  the tuneloop Trainer with no callbacks,
  (c)  the Trainer with all nine built-ins minus W&B (Pruner with a no-op report, Checkpoint saving
       every epoch into a temporary directory),
  (c') the same without Checkpoint,

as ms/epoch and as ratios to (a). The variants run interleaved (one run of each per round, so drift
hits all alike) after a warm-up round; reported are the median time per epoch and the median of the
per-round ratios. Targets: (b) <= 1.03, (c) <= 1.10.

Run: `.venv/bin/python benchmarks/trainer_overhead.py [--epochs 20 --repeats 9 --threads 1]`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from tuneloop.callbacks import (CheckpointCallback, EarlyStoppingCallback, GradientMonitorCallback,
                                LossPredictionCallback, NaNDetectionCallback, OptimizerModeCallback,
                                OverfitDetectionCallback, PrunerCallback)
from tuneloop.training.data import make_loader
from tuneloop.metrics import accuracy
from tuneloop.recipes.digits import MLP, load_data
from tuneloop.trainer import Trainer

DATA = None


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


def bare(epochs: int) -> float:
    """What a researcher writes by hand: same batches, loss summed on the device, read once per epoch."""
    model, optimizer, criterion, train, val = parts()
    history = []
    started = time.perf_counter()
    for epoch in range(epochs):
        model.train()
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
        with torch.no_grad():
            sums, n = torch.zeros(2), 0
            for x, y in val:
                out = model(x)
                sums += torch.stack([criterion(out, y), accuracy(out, y)]) * len(y)
                n += len(y)
            val_loss, val_acc = (sums / n).tolist()
        history.append((epoch, train_loss, val_loss, val_acc))
    elapsed = time.perf_counter() - started
    assert len(history) == epochs and all(v == v for _, t, v, _ in history)
    return elapsed / epochs


def with_trainer(epochs: int, callbacks_factory) -> float:
    with tempfile.TemporaryDirectory(prefix="tuneloop-bench-") as directory:
        model, optimizer, criterion, train, val = parts()
        trainer = Trainer(model, optimizer, None, criterion, callbacks_factory(epochs, directory),
                          metrics={"accuracy": accuracy})
        started = time.perf_counter()
        trainer.train(train, val, epochs)
        return (time.perf_counter() - started) / epochs


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = {
        "(a)  bare PyTorch loop": lambda: bare(args.epochs),
        "(b)  Trainer, no callbacks": lambda: with_trainer(args.epochs, no_callbacks),
        "(c)  Trainer, 8 built-ins (no W&B)": lambda: with_trainer(args.epochs, all_builtins(True)),
        "(c') (c) without Checkpoint": lambda: with_trainer(args.epochs, all_builtins(False)),
    }
    for run in variants.values():  # warm-up
        run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):  # interleaved, so drift hits every variant alike
        for name, run in variants.items():
            times[name].append(run())
    base_name = next(iter(variants))
    base = times[base_name]
    print(f"digits MLP (hidden 128, 2 layers, batch 128), AdamW, CPU, {args.threads} thread(s), "
          f"{args.epochs} epochs x {args.repeats} interleaved repeats (after a warm-up round):")
    print(f"  {'variant':<36} {'median ms/epoch':>15} {'ratio to (a)':>13} {'min ms/epoch':>13}")
    for name, values in times.items():
        ratio = statistics.median(v / b for v, b in zip(values, base))
        print(f"  {name:<36} {statistics.median(values) * 1000:15.2f} {ratio:13.3f} {min(values) * 1000:13.2f}")
    print("  targets: (b) <= 1.03, (c) <= 1.10   (ratio = median over rounds of variant/(a) in that round)")


if __name__ == "__main__":
    main()
