"""Trainer overhead on the digits MLP (CPU): time per epoch of
(a) a bare hand-written PyTorch loop, (b) the Trainer with no callbacks, (c) the Trainer with all
built-ins (W&B off; Pruner with a no-op report; Checkpoint every epoch into a temp dir), and (c')
the same without Checkpoint — as ratios to (a), from one run with interleaved repeats.

Run: `.venv/bin/python benchmarks/trainer_overhead.py [--epochs 20 --repeats 7]`.
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
from tuneloop.data import make_loader
from tuneloop.metrics import accuracy
from tuneloop.recipes.digits import MLP, load_data
from tuneloop.trainer import Trainer


def parts(seed=0):
    torch.manual_seed(seed)
    train_set, val_set = load_data()
    model = MLP(hidden=128, layers=2, dropout=0.1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return (model, optimizer, torch.nn.CrossEntropyLoss(), make_loader(train_set, 128, True, seed, "cpu"),
            make_loader(val_set, 1024, False, seed, "cpu"))


def bare(epochs: int) -> float:
    """What a researcher writes by hand: same batches, loss summed on the device, read once per epoch."""
    model, optimizer, criterion, train, val = parts()
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
    assert train_loss == train_loss and val_loss == val_loss and val_acc >= 0
    return (time.perf_counter() - started) / epochs


def with_trainer(epochs: int, callbacks_factory) -> float:
    model, optimizer, criterion, train, val = parts()
    trainer = Trainer(model, optimizer, None, criterion, callbacks_factory(epochs), metrics={"accuracy": accuracy})
    started = time.perf_counter()
    trainer.train(train, val, epochs)
    return (time.perf_counter() - started) / epochs


def all_builtins(checkpoint: bool):
    def factory(epochs):
        callbacks = [NaNDetectionCallback(), OptimizerModeCallback(), GradientMonitorCallback(),
                     LossPredictionCallback(epochs), OverfitDetectionCallback(), EarlyStoppingCallback(),
                     PrunerCallback(report=lambda metrics, checkpoint_dir: None)]
        if checkpoint:
            callbacks.append(CheckpointCallback(tempfile.mkdtemp(prefix="tuneloop-bench-"), keep_last_k=2))
        return callbacks
    return factory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = {
        "(a) bare PyTorch loop": lambda: bare(args.epochs),
        "(b) Trainer, no callbacks": lambda: with_trainer(args.epochs, lambda e: []),
        "(c) Trainer, all built-ins": lambda: with_trainer(args.epochs, all_builtins(True)),
        "(c') all built-ins but Checkpoint": lambda: with_trainer(args.epochs, all_builtins(False)),
    }
    for run in variants.values():  # warm-up
        run()
    times = {name: [] for name in variants}
    for _ in range(args.repeats):  # interleaved, so drift hits every variant alike
        for name, run in variants.items():
            times[name].append(run())
    base = statistics.median(times["(a) bare PyTorch loop"])
    print(f"digits MLP (hidden 128, 2 layers, batch 128), AdamW, CPU, {args.threads} thread(s), "
          f"{args.epochs} epochs x {args.repeats} repeats, median per epoch:")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:<36} {median * 1000:7.2f} ms/epoch   ratio {median / base:.3f}")
    print("targets: (b) <= 1.03, (c) <= 1.10")


if __name__ == "__main__":
    main()
