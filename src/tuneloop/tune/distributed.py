"""A trial larger than one process: `sweep.resources_per_trial.workers: N > 1` trains the trial's run
data-parallel on N Ray Train workers, under the same sweep.

The Tune trial (a function trainable holding `DRIVER_CPU`) runs `TorchTrainer(...).fit()` (Ray
Train V2) and waits; each worker builds the same run (`build_run`: its share of the data, the
model in DDP, the same callbacks; `tuneloop.ranks` for what is not Ray) and trains it with the same
`Trainer`. Rank 0's reports reach Tune's scheduler and searcher through Ray's `TuneReportCallback`;
every rank calls `ray.train.report` once per epoch (a barrier), rank 0 attaches the checkpoint,
which Ray Train keeps in the trial's directory (`train/`). A killed worker: Ray Train restarts the
group from that checkpoint (`sweep.max_failures` times). A restarted trial (`tuneloop resume`):
the Train run of the same name continues from its latest checkpoint.

A scheduler's STOP cannot reach the workers through `tune.report` (they report to Ray Train): the
Tune trial, when Tune stops it, raises a flag (`_compat.request_stop`) that rank 0 reads after each
report and every rank agrees on; the workers then end as a one-process trial does at a STOP
(`on_train_end` fires, W&B marks the run pruned), `fit()` returns and Ray Train removes the
workers' placement group. If they take longer than the trial thread's timeout, Tune kills the
trial; the Train controller dies with it and the placement group is removed by Ray Train's cleaner,
which needs Ray's State API (`ray[default]`, and a local Ray started with its dashboard process:
`tuneloop.tune.session`).

Resources: the workers' placement group is outside Tune's accounting, which only sees the trial's
`DRIVER_CPU`; `concurrent_trials` caps `max_concurrent_trials` so that the concurrent trials'
workers fit (`trial_demand`).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from pathlib import Path

DRIVER_CPU = 0.01  # the Tune trial that runs `fit()`: Ray Train needs a non-zero request there
TRAIN_SETTINGS = {
    # how often the Train controller polls its workers, and so collects their reports for Tune (one per
    # poll): at Ray's 2 s, a trial of short epochs reaches Tune (and a scheduler's STOP reaches the
    # workers) only every 2 s; the controller passes the variable on to its workers itself
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
}
TRAIN_DIR = "train"  # the Train run's directory (checkpoints, its state) inside the trial's directory


def state_api_installed() -> bool:
    """Whether `ray[default]` is installed (`pip install 'tuneloop[distributed]'`): the dashboard's
    server that answers Ray's State API, which Ray Train's placement-group cleaner asks whether a
    Train run's controller is alive."""
    import importlib.util

    return all(importlib.util.find_spec(module) is not None for module in ("aiohttp", "aiohttp_cors", "opencensus"))


# --- resource arithmetic (no Ray) -------------------------------------------------------------------

def trial_demand(need) -> tuple[float, float]:
    """(cpu, gpu) one trial holds while it runs: `workers x (cpu, gpu)` plus the driver's CPU share
    (a one-worker trial: its own cpu and gpu)."""
    if need.workers == 1:
        return need.cpu, need.gpu
    return need.workers * need.cpu + DRIVER_CPU, need.workers * need.gpu


def tune_resources(need) -> dict:
    """What Tune reserves for a trial: its one process, or the driver of its Train run (whose
    workers ask Ray Train for their own placement group)."""
    if need.workers == 1:
        return {"cpu": need.cpu, "gpu": need.gpu}
    return {"cpu": DRIVER_CPU, "gpu": 0}


def workers_that_fit(need, nodes: list[tuple[float, float]]) -> int:
    """How many of a trial's workers the nodes `[(cpu, gpu), ...]` hold at once, the driver's CPU
    share taken first from the node with the most CPUs."""
    free = sorted(([cpu, gpu] for cpu, gpu in nodes), reverse=True)
    if not free or free[0][0] < DRIVER_CPU:
        return 0
    free[0][0] -= DRIVER_CPU
    fit = 0
    for cpu, gpu in free:
        by_cpu = math.floor(cpu / need.cpu + 1e-9)
        by_gpu = math.floor(gpu / need.gpu + 1e-9) if need.gpu else by_cpu
        fit += max(0, min(by_cpu, by_gpu))
    return fit


def concurrent_trials(need, cpus: float, gpus: float) -> int:
    """How many distributed trials the totals `cpus`, `gpus` run at once (at least 1)."""
    cpu, gpu = trial_demand(need)
    fit = math.floor(cpus / cpu + 1e-9)
    if gpu:
        fit = min(fit, math.floor(gpus / gpu + 1e-9))
    return max(1, fit)


# --- the Tune trial -----------------------------------------------------------------------------

def fit_trial(config: dict, *, run: dict, experiment: str, tags: tuple[str, ...], workers: int, cpu: float,
              gpu: float, max_failures: int) -> None:
    """The Tune trial of a distributed run: `TorchTrainer(train_worker, ...).fit()` with `workers`
    workers of `cpu` and `gpu` each, rank 0's reports forwarded to Tune; the Train run lives in
    the trial's directory, so that a restarted trial continues from its latest checkpoint."""
    from ray import tune
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from tuneloop.tune import _compat
    from tuneloop.tune.trial import artifact_dir, trial_storage

    for name, value in TRAIN_SETTINGS.items():  # read by the Train controller this process starts
        os.environ.setdefault(name, value)
    context = tune.get_context()
    storage = trial_storage()
    stop_key = f"{context.get_trial_id()}-{time.time_ns()}"
    _compat.STOP_KEYS.append(stop_key)  # raised when Tune stops the trial (`_compat.request_stop`)
    keep = run["checkpoint_config"]["keep_last_k"]
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"config": config, "run": run, "experiment": experiment, "tags": list(tags),
                           "trial_id": context.get_trial_id(), "trial_name": context.get_trial_name(),
                           "files": artifact_dir(context), "cpu": cpu, "stop_key": stop_key,
                           "remote": None if storage.is_local else storage},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu > 0,
                                     resources_per_worker={"CPU": cpu, **({"GPU": gpu} if gpu else {})}),
        run_config=RunConfig(name=TRAIN_DIR, storage_path=storage.root, storage_filesystem=storage.fs,
                             callbacks=[TuneReportCallback()],
                             # a worker's failure restarts the group from the latest checkpoint; the
                             # controller's own failures are not retried forever (Ray's default)
                             failure_config=FailureConfig(max_failures=max_failures, controller_failure_limit=0),
                             checkpoint_config=CheckpointConfig(num_to_keep=keep)),
    )
    print(f"[tuneloop] trial {context.get_trial_id()}: {workers} workers x (cpu={cpu:g}, gpu={gpu:g})", flush=True)
    try:
        replay_reports(storage.fs, f"{storage.root}/{TRAIN_DIR}", run, config)
        trainer.fit()
    finally:
        _compat.STOP_KEYS.remove(stop_key)


def replay_reports(filesystem, train_dir: str, run: dict, config: dict) -> None:
    """A trial that Tune starts again (its driver was killed and `tuneloop resume` restored it) holds
    no Tune checkpoint: Tune starts its history over, while its Train run continues after its latest
    checkpoint. The epochs up to that checkpoint (its metrics.csv rows) are reported to Tune again
    first, so the history stays contiguous; a scheduler's STOP in reply ends the trial there
    (SystemExit, as at any report)."""
    from tuneloop.callbacks.pruner import PrunerCallback
    from tuneloop.checkpoints import ended
    from tuneloop.config.schema import RunConfig
    from tuneloop.config.search_space import apply_params
    from tuneloop.training.build import run_hash
    from tuneloop.tune.trial_checkpoint import load_tune_checkpoint, newest_in

    checkpoint = newest_in(filesystem, train_dir)
    if checkpoint is None:
        return
    run_cfg = RunConfig.model_validate(apply_params(run, config))
    state, _ = load_tune_checkpoint(checkpoint, expected_hash=run_hash(run_cfg))
    rows = next((s["rows"] for name, s in state["callbacks"].items() if name.startswith("MetricsCsvCallback")), [])
    if ended(state, run_cfg.epochs):  # the workers report the run's last epoch again themselves
        rows = rows[:-1]
    PrunerCallback().report_lost(rows)


# --- each worker --------------------------------------------------------------------------------

def train_worker(loop: dict) -> None:
    """One rank of a distributed trial: the trial's run built on this rank (`build_run`), restored
    from the Train run's latest checkpoint if there is one, trained; reports through `ray.train`."""
    import ray
    import ray.train
    import ray.train.torch
    import torch

    from tuneloop.callbacks.metrics_csv import MetricsCsvCallback
    from tuneloop.callbacks.pruner import PrunerCallback
    from tuneloop.checkpoints import ended, restore_state
    from tuneloop.config.schema import RunConfig
    from tuneloop.config.search_space import apply_params
    from tuneloop.ranks import process_group
    from tuneloop.storage import METRICS_FILE
    from tuneloop.training.build import build_run, run_hash
    from tuneloop.tune.rank_files import UploadFiles
    from tuneloop.tune.trial_checkpoint import load_tune_checkpoint

    torch.set_num_threads(max(1, int(loop["cpu"])))
    rank, world_size = process_group()
    device = ray.train.torch.get_device()
    config = loop["config"]
    run_cfg = RunConfig.model_validate(apply_params(loop["run"], config))
    where = {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
             "gpu_ids": ",".join(str(i) for i in ray.get_gpu_ids()), "device": str(device),
             "started_at": time.time(), "resumed_from": "", "workers": world_size}
    pruner = PrunerCallback(report=WorkerReport(loop["stop_key"], rank, world_size), static=where)
    extra = [pruner]
    scratch = Path(tempfile.mkdtemp(prefix=f"tuneloop-{loop['trial_id']}-{rank}-"))
    if rank == 0:  # one writer of the trial's files
        if loop["remote"] is None:  # local storage: the trial's directory itself (one host, or shared)
            extra.append(MetricsCsvCallback(Path(loop["files"]) / METRICS_FILE))
        else:
            extra += [MetricsCsvCallback(scratch / METRICS_FILE), UploadFiles(scratch, loop["remote"], [METRICS_FILE])]
    try:
        parts = build_run(run_cfg, device=device, checkpoint_dir=scratch, staging=True, extra_callbacks=extra,
                          wandb_init={"group": loop["experiment"], "id": loop["trial_id"],
                                      "name": loop["trial_name"], "dir": loop["files"],
                                      "config": {**config, "experiment": loop["experiment"]},
                                      "tags": loop["tags"]})
        start_epoch = 0
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            state, path = load_tune_checkpoint(checkpoint, expected_hash=run_hash(run_cfg), map_location=device)
            start_epoch = restore_state(parts.trainer, state)
            pruner.static["resumed_from"] = path.rstrip("/").rpartition("/")[2]
            if rank == 0:
                print(f"[tuneloop] resumed from {path} (epoch {start_epoch - 1})", flush=True)
            reason = ended(state, run_cfg.epochs)
            if reason:  # restarted after the run's own end: its end is reported again, nothing trained
                pruner.report_end(state.get("record") or {"epoch": start_epoch - 1, "val_loss": state["val_loss"]},
                                  reason)
                return
        parts.trainer.train(parts.train_loader, parts.val_loader, run_cfg.epochs, start_epoch)
    except SystemExit:  # Tune stopped the trial (`WorkerReport`): a normal end for Ray Train
        return
    finally:
        parts = None
        shutil.rmtree(scratch, ignore_errors=True)


class WorkerReport:
    """The PrunerCallback's `report` on a worker: `ray.train.report` on every rank (a barrier; rank 0
    attaches the epoch's checkpoint, as only its CheckpointCallback writes), then whether Tune
    stopped the trial, as rank 0 reads it and every rank agrees: SystemExit then, as `tune.report`
    raises in a one-process trial."""

    def __init__(self, stop_key: str, rank: int, world_size: int):
        self.stop_key, self.rank, self.world_size = stop_key, rank, world_size

    def __call__(self, metrics: dict, checkpoint_dir: str | None) -> None:
        import ray.train

        from tuneloop.ranks import agreed_stop
        from tuneloop.tune import _compat

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        name = f"checkpoint_{int(metrics.get('epoch', 0)):06d}" if checkpoint else None
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)
        stopped = "stopped" if self.rank == 0 and _compat.stop_requested(self.stop_key) else None
        if agreed_stop(self.world_size, stopped):
            raise SystemExit(0)
