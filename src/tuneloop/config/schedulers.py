"""The trial schedulers a sweep may name (`sweep.scheduler.name`), without Ray.

What the rest of tuneloop needs to know of each: the class that implements it (in
`tuneloop.tune.schedulers`, or Ray's own), the keyword arguments tuneloop sets itself from the
sweep section (a user may not), whether it pauses trials or swaps checkpoints between them (then
every epoch must be checkpointed), and the file in the sweep's local directory where it keeps
the state that Ray does not save, read back when a sweep is resumed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SchedulerSpec:
    cls: str  # import path of the class tuneloop builds
    set_by_tuneloop: tuple[str, ...]  # keyword arguments taken from the sweep section
    pauses: bool  # pauses trials (or swaps in another trial's checkpoint): needs a checkpoint every epoch
    state_file: str | None  # its state, in the sweep's local directory (None: nothing to keep)


REGISTRY: dict[str, SchedulerSpec] = {
    "fifo": SchedulerSpec("ray.tune.schedulers.FIFOScheduler", (), False, None),
    "asha": SchedulerSpec("tuneloop.tune.schedulers.asha.PersistentASHA",
                          ("time_attr", "metric", "mode", "max_t", "state_path"), False, "asha_state.pkl"),
    "hyperband": SchedulerSpec("tuneloop.tune.schedulers.pausing.HyperBand",
                               ("time_attr", "metric", "mode", "max_t"), True, None),
    "median": SchedulerSpec("tuneloop.tune.schedulers.pausing.MedianStopping",
                            ("time_attr", "metric", "mode"), True, None),
    "pbt": SchedulerSpec("tuneloop.tune.schedulers.pausing.PBT",
                         ("time_attr", "metric", "mode", "hyperparam_mutations"), True, None),
    "pfl": SchedulerSpec("tuneloop.tune.schedulers.pfl.PredictedFinalLossScheduler",
                         ("max_t", "state_path"), False, "pfl_state.json"),
}
NAMES = tuple(REGISTRY)
STATE_FILES = tuple(spec.state_file for spec in REGISTRY.values() if spec.state_file)
