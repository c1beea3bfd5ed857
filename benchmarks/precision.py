"""Mixed precision and torch.compile: training time per step of the two recipes with a real model,

  (a) fp32,
  (b) bf16 (`run.precision: bf16`: autocast around `compute_loss`),
  (c) bf16 + compile (`run.compile: true`: CompileCallback, `torch.compile` of the model),

for the CNN (experiments/cifar_cnn.yaml: a small ResNet with BatchNorm, batch 64) and the BERT
(experiments/text_bert.yaml: a tiny Hugging Face BERT, dict batches, its own loss, batch 16 with
accumulation over 2), on the device there is (CUDA when present, else the CPU), as ms/step and as
ratios to (a). A step is one batch: forward, backward, and the optimizer step every
`accumulate_steps` batches, through `Trainer.train_epoch` with the callbacks a trial has.

Each variant is built as a trial builds it (`build_run` with `run.precision` / `run.compile`
overridden, the same seed). Its batches are drawn once from the recipe's loader and kept on the
device, so the data pipeline is not timed. Warm-up steps come first (compilation happens in
them: their time is shown, not counted); then the timed steps, the device synchronized only
before and after them (the epoch's one read of its loss waits for the last step), never per
step. Variants run interleaved (one block of each per round, so drift hits all alike); reported
are the median ms/step and the median of the per-round ratios. At least 2 warm-up steps: the
BERT compiles twice (its first forward sets `config.problem_type`, which the first graph guards).

Run: `.venv/bin/python benchmarks/precision.py` (`--steps 30 --warmup 5 --rounds 5`,
`--device cpu|cuda`, `--threads 1`, `--recipes cnn bert`, `--set run.batch_size=256` for both
recipes); `--quick` for a first look (under 2 minutes on 2 CPUs, most of it compiling; less once
inductor's cache is warm).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RECIPES = {  # name → (experiment file, overrides)
    "cnn": ("cifar_cnn.yaml", ["run.loader_config={num_workers: 0}"]),  # batches drawn once: no workers needed
    "bert": ("text_bert.yaml", []),
}
VARIANTS = {  # name → overrides
    "(a) fp32": ["run.precision=fp32", "run.compile=false"],
    "(b) bf16": ["run.precision=bf16", "run.compile=false"],
    "(c) bf16 + compile": ["run.precision=bf16", "run.compile=true"],
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Variant:
    """One recipe in one variant: its Trainer (built as a trial builds it) and its batches on the device."""

    def __init__(self, recipe: str, overrides: list[str], device: torch.device, batches: int):
        from tuneloop.config import load_experiment
        from tuneloop.training.build import build_run

        experiment, recipe_overrides = RECIPES[recipe]
        cfg = load_experiment(REPO / "experiments" / experiment, [*recipe_overrides, *overrides])
        run = build_run(cfg.run, device=device)
        self.trainer, self.device = run.trainer, device
        self.batches = draw(run.train_loader, batches, self.trainer)
        self.epoch = 0
        self.trainer.epochs = 1 << 30
        self.trainer.callbacks.fire("on_train_begin", trainer=self.trainer, epochs=self.trainer.epochs, start_epoch=0)

    def seconds(self, steps: int) -> float:
        """Wall time of `steps` training steps, the device synchronized before and after only."""
        synchronize(self.device)
        started = time.perf_counter()
        self.trainer.train_epoch(self.batches[:steps], self.epoch)  # its loss read at the end waits for the device
        synchronize(self.device)
        self.epoch += 1
        return time.perf_counter() - started


def draw(loader, count: int, trainer) -> list:
    """`count` full batches of `loader` (epoch after epoch), moved to the trainer's device."""
    batches, epoch, size = [], 0, None
    while len(batches) < count:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        for batch in loader:
            first = batch[0] if isinstance(batch, (tuple, list)) else next(iter(batch.values()))
            size = size or len(first)
            if len(first) == size:  # a last, smaller batch would change the shapes (and recompile)
                batches.append(trainer.to_device(batch))
            if len(batches) == count:
                break
        epoch += 1
    return batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens there)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda when present)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1, as a trial with cpu: 1 has)")
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a dotted key of both experiments (repeatable), e.g. run.batch_size=256")
    parser.add_argument("--quick", action="store_true", help="--steps 10 --warmup 3 --rounds 3: a first look")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup, args.rounds = 10, 3, 3
    if args.warmup < 2 or args.steps < 1 or args.rounds < 1:
        parser.error("--warmup >= 2 (compilation takes two steps), --steps >= 1 and --rounds >= 1 must hold")
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} thread(s)"
    print(f"device {device} ({where}), torch {torch.__version__}; {args.warmup} warm-up steps, then "
          f"{args.steps} timed steps x {args.rounds} interleaved round(s)", flush=True)

    results = {}
    for recipe in args.recipes:
        print(f"{recipe}: building the {len(VARIANTS)} variants and warming them up", flush=True)
        variants, warmups = {}, {}
        for name, overrides in VARIANTS.items():
            variant = Variant(recipe, [*args.overrides, *overrides], device, args.warmup + args.steps)
            started = time.perf_counter()
            variant.trainer.train_epoch(variant.batches[:args.warmup], 0)  # compiles, for (c)
            synchronize(device)
            warmups[name] = time.perf_counter() - started
            variant.batches = variant.batches[args.warmup:]
            variants[name] = variant
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, variant in variants.items():
                times[name].append(variant.seconds(args.steps) / args.steps)
        results[recipe] = times, warmups

    print(f"  {'recipe':<6} {'variant':<20} {'median ms/step':>14} {'ratio to (a)':>13} {'warm-up s':>10}")
    for recipe, (times, warmups) in results.items():
        base = times["(a) fp32"]
        for name, values in times.items():
            ratio = statistics.median(v / b for v, b in zip(values, base))
            print(f"  {recipe:<6} {name:<20} {statistics.median(values) * 1000:14.2f} {ratio:13.3f} "
                  f"{warmups[name]:10.1f}")
    print("  ratio: median over rounds of variant/(a) in that round (below 1: faster than fp32); warm-up: the "
          f"{args.warmup} untimed steps, with compilation for (c)")


if __name__ == "__main__":
    sys.exit(main())
