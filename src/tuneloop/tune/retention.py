"""Checkpoint retention for sweeps: once a trial is finished, keep its last `keep_last_k`
checkpoints (by epoch) and its best by `monitor`, delete the rest from the trial's storage.

Ray's own `CheckpointConfig(num_to_keep=k)` deletes checkpoints while the trial runs, which can
remove the checkpoint the last experiment snapshot points to (a restore then fails). Pruning only
finished trials never touches a checkpoint a restore could need: a finished trial is not re-run,
and its latest checkpoint is always kept.
"""

from __future__ import annotations

import logging
import math

from ray.tune import Callback

from tuneloop.tune import _compat

logger = logging.getLogger(__name__)


def to_keep(records: list[tuple[int, str, float]], keep_last_k: int, mode: str) -> set[str]:
    """Names of the checkpoints to keep from (epoch, checkpoint dir name, monitored value) records."""
    if not records:
        return set()
    by_epoch = sorted(records)
    keep = {name for _, name, _ in by_epoch[-keep_last_k:]}
    finite = [r for r in records if isinstance(r[2], (int, float)) and math.isfinite(r[2])]
    if finite:
        best = (min if mode == "min" else max)(finite, key=lambda r: r[2])
        keep.add(best[1])
    return keep


class KeepCheckpoints(Callback):
    """Tune callback: prune each finished trial's checkpoints to the last k and the best."""

    def __init__(self, keep_last_k: int, monitor: str, mode: str):
        self.keep_last_k, self.monitor, self.mode = keep_last_k, monitor, mode
        self.records: dict[str, list[tuple[int, str, float]]] = {}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        name = result.get("checkpoint_dir_name")
        if name:
            self.records.setdefault(trial.trial_id, []).append(
                (int(result.get("epoch", -1)), name, result.get(self.monitor, math.nan)))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.prune(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.prune(trial)

    def prune(self, trial) -> None:
        records = self.records.pop(trial.trial_id, [])
        keep = to_keep(records, self.keep_last_k, self.mode)
        filesystem, trial_dir = _compat.trial_storage_of(trial)
        for _, name, _ in records:
            if name not in keep:
                path = f"{trial_dir}/{name}"
                try:
                    filesystem.delete_dir(path)
                except FileNotFoundError:
                    pass
                except OSError as exc:  # never fail the sweep over a cleanup
                    logger.warning("could not delete checkpoint %s: %s", path, exc)
