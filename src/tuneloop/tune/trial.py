"""One trial's run inside its Ray worker: `run_trial` trains the RunConfig with the trial's
parameters (`tuneloop.tune.trainable.train_trial`, what Tune is handed, calls it there).

Reports go through PrunerCallback (one `tune.report` per epoch, with the epoch's checkpoint when
due); a scheduler STOP arrives as SystemExit and ends the trial as pruned. With `reuse_actors=True`
the same worker runs the next trial: everything this trial built is released (and the CUDA cache
emptied) before it returns.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from tuneloop.callbacks.checkpoint import CheckpointCallback
from tuneloop.callbacks.metrics_csv import MetricsCsvCallback
from tuneloop.callbacks.pruner import PrunerCallback
from tuneloop.config.schema import RunConfig
from tuneloop.config.search_space import apply_params
from tuneloop.storage import METRICS_FILE, Storage
from tuneloop.training.build import build_run, run_hash
from tuneloop.checkpoints import ended, restore_state
from tuneloop.tune import _compat
from tuneloop.tune.trial_checkpoint import adopt_newer, load_tune_checkpoint
from tuneloop.tune.trial_log import START


def trial_device() -> torch.device:
    """`cuda` when Ray gave this trial a GPU (or a share of one) and CUDA works, else CPU."""
    import ray

    if ray.get_gpu_ids() and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def apply_hyperparameters(trainer, optimizer_config: dict) -> None:
    """Put the trial's optimizer hyperparameters into the restored optimizer.

    A restored optimizer state carries the hyperparameters it was saved with; after PBT clones
    another trial's checkpoint, the trial's (mutated) config must win. `lr` is rescaled along
    the LR schedule (param group and scheduler base LR by the ratio new/initial) so the schedule
    stays in step; other keys are set as given. A plain resume changes nothing: the values match.
    """
    scheduler = trainer.scheduler
    for index, group in enumerate(trainer.optimizer.param_groups):
        for key, value in optimizer_config.items():
            if key == "lr":
                initial = group.get("initial_lr", group["lr"])
                if initial and value != initial:
                    group["lr"] = group["lr"] * value / initial
                    if "initial_lr" in group:
                        group["initial_lr"] = value
                    if scheduler is not None and hasattr(scheduler, "base_lrs"):
                        scheduler.base_lrs[index] = value
            elif key in group and not isinstance(group[key], torch.Tensor):
                group[key] = value


def trial_storage() -> Storage:
    """The trial's directory in the sweep's storage (local or remote), as Tune's session names it."""
    filesystem, trial_dir = _compat.trial_storage()
    return Storage(filesystem, trial_dir, trial_dir)


def artifact_dir(context) -> str:
    """Where the trial's own files (W&B run, metrics.csv) go, created if needed: its directory in
    the storage when that is local (Ray only syncs the working directory at checkpoints, and the
    run's last records come after the last report), else the working directory, which Ray syncs
    to the storage (`sync_artifacts`)."""
    storage = trial_storage()
    if storage.is_local:
        # Tune creates it with the trial's first synced file: later than our first epoch when its
        # snapshots are rare (TUNE_GLOBAL_CHECKPOINT_S), so it may not exist yet
        Path(storage.root).mkdir(parents=True, exist_ok=True)
        return storage.root
    return context.get_trial_dir()


def resume_point(checkpoint, expected_hash: str, device, adopt: bool) -> tuple[dict, str, int | None]:
    """(state, path, lost_after) to continue a trial from: the newest intact checkpoint of its own
    newer than the one Tune's snapshot names, if any (`checkpoint`, None: none) and `adopt`, else
    Tune's, falling back to the previous intact one when it is damaged; one written for other data
    or another model is refused (PBT's clones share both: they load). `lost_after`: when a newer
    one was adopted, the epoch of Tune's (-1: none; Tune lost the reports after it), else None.
    (None, "", None): a trial that starts from scratch."""
    if adopt:
        filesystem, trial_dir = _compat.trial_storage()
        adopted = adopt_newer(checkpoint, filesystem, trial_dir, expected_hash=expected_hash, map_location=device)
        if adopted is not None:
            _compat.number_checkpoints_after(adopted.index)  # the newer ones stay as they are
            return adopted.state, adopted.path, adopted.named_epoch
    if checkpoint is None:
        return None, "", None
    state, path = load_tune_checkpoint(checkpoint, expected_hash=expected_hash, map_location=device)
    return state, path, None


def write_checkpoints_in_place(trainer) -> None:
    """On local storage, the CheckpointCallback writes each checkpoint in the background straight into
    the directory Tune persists the epoch's report as, and the report carries an empty directory:
    the next epoch trains while the state is serialized and written, and nothing is copied twice.
    Elsewhere (an object store) the state is staged and Tune uploads it during the report."""
    if not trial_storage().is_local:
        return
    for callback in trainer.callbacks:
        if isinstance(callback, CheckpointCallback):
            callback.publish_to(lambda: Path(_compat.next_checkpoint_path()))


def run_trial(config: dict, *, run: dict, experiment: str, tags: tuple[str, ...] = (),
                adopt: bool = True) -> None:
    """Train `run` with the trial's `config` (dotted keys into `run`) applied; `tags` go to its
    W&B run (when enabled), whose group is the experiment, name and id the trial's. `adopt`: a
    restored trial continues from a newer checkpoint of its own than the one Tune names, if any
    (`resume_point`; off under schedulers that pause or clone trials, whose snapshots are per result)."""
    import ray
    from ray import tune

    # Ray logs "Checkpoint successfully created at: ..." on every checkpoint: noise in the sweep's log
    logging.getLogger(_compat.CHECKPOINT_LOGGER).setLevel(logging.WARNING)
    context = tune.get_context()
    run_cfg = RunConfig.model_validate(apply_params(run, config))
    cpus = context.get_trial_resources().required_resources.get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    device = trial_device()
    gpu_ids = ",".join(str(i) for i in ray.get_gpu_ids())
    where = {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(), "gpu_ids": gpu_ids,
             "device": str(device), "started_at": time.time(), "resumed_from": ""}
    start = START.format(trial_id=context.get_trial_id())
    print(f"{start}{device} (gpu ids [{gpu_ids}], {torch.get_num_threads()} threads): {config}", flush=True)
    print(start, file=sys.stderr, flush=True)  # each stream says which trial its next lines are of (trial_log)
    scratch = Path(tempfile.mkdtemp(prefix=f"tuneloop-{context.get_trial_id()}-"))
    pruner = PrunerCallback(static=where)
    files = artifact_dir(context)
    metrics_csv = MetricsCsvCallback(Path(files) / METRICS_FILE)
    try:
        run_parts = build_run(
            run_cfg, device=device, checkpoint_dir=scratch, staging=True,
            extra_callbacks=[pruner, metrics_csv],
            wandb_init={"group": experiment, "id": context.get_trial_id(), "name": context.get_trial_name(),
                        "dir": files, "config": {**config, "experiment": experiment},
                        "tags": list(tags)},
        )
        if adopt:  # (schedulers that pause or clone trials read Tune's checkpoints the moment they are reported)
            write_checkpoints_in_place(run_parts.trainer)
        start_epoch = 0
        state, path, lost_after = resume_point(tune.get_checkpoint(), run_hash(run_cfg), device, adopt)
        if state is not None:
            start_epoch = restore_state(run_parts.trainer, state)
            apply_hyperparameters(run_parts.trainer, run_cfg.optimizer_config)
            pruner.static["resumed_from"] = path.rstrip("/").rpartition("/")[2]
            print(f"[tuneloop] resumed from {path} (epoch {start_epoch - 1})", flush=True)
            reason = ended(state, run_cfg.epochs)
            if lost_after is not None:  # Tune's snapshot lagged: the reports it lost are sent again
                lost = [row for row in metrics_csv.rows if lost_after < row["epoch"] < start_epoch - 1 or
                        (row["epoch"] == start_epoch - 1 and not reason)]
                try:
                    pruner.report_lost(lost)
                except SystemExit:  # the scheduler stops the trial at one of them, as it would have then
                    metrics_csv.keep_until(pruner.last_epoch)
                    raise
            if reason:  # the driver died after the trial's own end:
                pruner.report_end(state.get("record") or {"epoch": start_epoch - 1, "val_loss": state["val_loss"]},
                                  reason)  # its end is reported again, nothing is trained again
                return
        run_parts.trainer.train(run_parts.train_loader, run_parts.val_loader, run_cfg.epochs, start_epoch)
    finally:
        run_parts = None  # release model, optimizer and data before the actor is reused
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        shutil.rmtree(scratch, ignore_errors=True)

