"""Checkpoint overhead inside Tune: seconds per epoch of a trial with checkpoints every N epochs
vs none, for the default digits MLP and a ~10M-parameter MLP, and the time to resume (read +
restore) the large model's checkpoint.

A checkpoint costs the training thread only a copy of the state into host memory: the state is
written in the background into the directory Tune persisted from the report (see
CheckpointCallback.publish_to). The parts of one checkpoint are timed separately too.

Each variant is one `tuneloop sweep` of a single trial (fifo) in one embedded Ray started once;
variants alternate (A B A B ...) so drift on a shared machine hits both. Per-epoch time is taken
from the trial's own reports (`reported_at`), after a warm-up epoch, so start-up is excluded.
Run: `.venv/bin/python benchmarks/checkpoint_overhead.py` (`--repeats 3 --save-every 1 5 10`, `--models 10M`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MODELS = {  # name → (overrides, epochs): one fixed configuration each
    "digits MLP (default experiment)": (["sweep.search_space={net_config.hidden: {type: categorical, choices: [128]}}"], 30),
    "10M-parameter MLP (AdamW)": (["run.net_config={hidden: 2240, layers: 3, dropout: 0.1}",
                                  "run.optimizer=torch.optim.AdamW", "run.optimizer_config={lr: 1.0e-3}",
                                  "sweep.search_space={net_config.hidden: {type: categorical, choices: [2240]}}"], 8),
}


def short(name: str) -> str:
    """A model's name on the command line: `digits`, `10M`."""
    return name.split()[0].split("-")[0]


def experiment(storage: str, model: list[str], epochs: int, save_every: int | None):
    from tuneloop.config import load_experiment

    checkpoint = (["run.checkpoint_config.enabled=false"] if save_every is None
                  else [f"run.checkpoint_config.save_every_n_epochs={save_every}"])
    return load_experiment(REPO / "experiments" / "digits_mlp.yaml", [
        "sweep.num_samples=1", "sweep.max_concurrent_trials=1", "sweep.scheduler={name: fifo}",
        f"run.epochs={epochs}", f"run.scheduler_config.T_max={epochs}", f"sweep.storage_path={storage}",
        "run.early_stopping_config.enabled=false", *model, *checkpoint])


def seconds_per_epoch(cfg) -> float:
    from tuneloop.sweep.paths import experiment_dir
    from tuneloop.sweep.run import run_sweep

    run_sweep(cfg, quiet=True, overwrite=True)
    [result] = experiment_dir(cfg).glob("trial_*/result.json")
    rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
    times = [row["reported_at"] for row in rows]
    return (times[-1] - times[1]) / (len(times) - 2)  # from the end of epoch 1: no warm-up


def resume_seconds(cfg) -> tuple[float, float]:
    """Read + restore of the trial's last checkpoint into a freshly built run; and its size in MB."""
    import torch

    from tuneloop.training.build import build_run
    from tuneloop.checkpoints import STATE_FILE, load_state, restore_state
    from tuneloop.sweep.paths import experiment_dir

    latest = sorted(experiment_dir(cfg).glob("trial_*/checkpoint_*"))[-1]
    parts = build_run(cfg.run, device=torch.device("cpu"))
    started = time.perf_counter()
    restore_state(parts.trainer, load_state(latest))
    return time.perf_counter() - started, (latest / STATE_FILE).stat().st_size / 1e6


def pieces(cfg, repeats: int = 5) -> dict[str, float]:
    """Median seconds of the parts of one checkpoint of the run's state, measured in this process:
    the copy into host memory (warm buffers; the only part left in the training thread), torch.save
    to a file (now in the background), and the copy of that file into a checkpoint directory that
    Ray's report used to make in the training thread (pyarrow, as Ray does)."""
    import os

    import pyarrow.fs
    import torch

    from tuneloop.checkpoints import HostCopy, collect_state
    from tuneloop.training.build import build_run

    trainer = build_run(cfg.run, device=torch.device("cpu")).trainer
    state, host_copy = collect_state(trainer, 0), HostCopy()
    copied, _ = host_copy(state)  # the first copy allocates the buffers
    scratch = Path(tempfile.mkdtemp(prefix="tl-ckpt-pieces-"))
    local = pyarrow.fs.LocalFileSystem()

    def ray_copy():
        target = scratch / "checkpoint"
        shutil.rmtree(target, ignore_errors=True)
        local.create_dir(str(target))
        pyarrow.fs.copy_files(str(scratch / "staged"), str(target), source_filesystem=local,
                              destination_filesystem=local, chunk_size=64 * 1024 * 1024)

    (scratch / "staged").mkdir()
    parts = {"host copy": lambda: host_copy(state),
             "torch.save": lambda: torch.save(copied, os.path.join(scratch, "staged", "state.pt")),
             "Ray's copy": ray_copy}
    times = {name: [] for name in parts}
    try:
        for _ in range(repeats):
            for name, part in parts.items():
                started = time.perf_counter()
                part()
                times[name].append(time.perf_counter() - started)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--save-every", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--models", nargs="+", choices=[short(name) for name in MODELS],
                        default=[short(name) for name in MODELS], help="which models")
    args = parser.parse_args()

    from tuneloop.tune.session import ensure_ray

    ensure_ray(None)
    storage = tempfile.mkdtemp(prefix="tl-ckpt-bench-")
    try:
        for name, (model, epochs) in MODELS.items():
            if short(name) not in args.models:
                continue
            variants = [None, *args.save_every]
            times = {v: [] for v in variants}
            for _ in range(args.repeats):
                for variant in variants:
                    times[variant].append(seconds_per_epoch(experiment(storage, model, epochs, variant)))
            base = statistics.median(times[None])
            print(f"{name}: {epochs} epochs, median of {args.repeats} runs")
            print(f"  no checkpoints:             {base * 1e3:8.1f} ms/epoch")
            for variant in args.save_every:
                value = statistics.median(times[variant])
                print(f"  checkpoint every {variant:>2} epochs: {value * 1e3:8.1f} ms/epoch  ratio {value / base:.3f}")
            cfg = experiment(storage, model, epochs, args.save_every[0])
            seconds, size = resume_seconds(cfg)
            print(f"  resume (read + restore one {size:.1f} MB checkpoint): {seconds * 1e3:.0f} ms")
            parts = pieces(cfg)
            print("  one checkpoint's parts: " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in parts.items())
                  + " (in the training thread: the host copy; before: torch.save and Ray's copy)")
    finally:
        import ray

        ray.shutdown()
        shutil.rmtree(storage, ignore_errors=True)


if __name__ == "__main__":
    main()
