"""Callbacks that the GPU tests' experiments load inside their trials (tests/gpu): a barrier that
holds trials until a number of them run at once on the GPU, and a log of the CUDA memory each
trial starts and ends with. Each writes one JSON file per trial, named by its trial id."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from tuneloop.callbacks import TrainingCallback


def _trial_id() -> str:
    from ray import tune

    return tune.get_context().get_trial_id()


def _write_json(path: Path, content: dict) -> None:
    """Write `content` to `path` whole or not at all (a reader polling the directory never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.tmp")
    partial.write_text(json.dumps(content))
    os.replace(partial, path)


class CudaBarrier(TrainingCallback):
    """At `on_train_begin` (its model already on the GPU) each trial writes `<directory>/<trial id>.json`
    (pid, CUDA_VISIBLE_DEVICES, the device's UUID, the bytes it has allocated there) and waits until
    `parties` trials have written theirs: then all of them were running at the same time, whatever
    the machine's speed. Raises when they do not all arrive within `timeout_s`."""

    priority = 90

    def __init__(self, directory: str, parties: int, timeout_s: float = 240.0):
        self.directory, self.parties, self.timeout_s = Path(directory), int(parties), float(timeout_s)

    def on_train_begin(self, trainer, **kwargs):
        device = trainer.device
        _write_json(self.directory / f"{_trial_id()}.json", {
            "pid": os.getpid(), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "device": str(device), "uuid": str(torch.cuda.get_device_properties(device).uuid),
            "allocated": torch.cuda.memory_allocated(device), "arrived_at": time.time()})
        deadline = time.monotonic() + self.timeout_s
        while (arrived := len(list(self.directory.glob("*.json")))) < self.parties:
            if time.monotonic() > deadline:
                raise RuntimeError(f"CudaBarrier: {self.parties} trials must run at once, but only {arrived} "
                                   f"arrived within {self.timeout_s:g} s")
            time.sleep(0.05)


class CudaMemoryLog(TrainingCallback):
    """Writes `<directory>/<trial id>.json` with the CUDA memory the trial holds at `on_train_begin`
    (its model built and on the GPU, nothing trained yet) and at `on_train_end` (before the
    trainable releases anything), the bytes of its parameters, and its pid.

    cuBLAS keeps a workspace per handle and stream in the caching allocator (32 MiB each on
    Hopper), which `memory_allocated` counts but no trial owns: they are cleared before the
    first reading, as torch's own CUDA memory-leak check does."""

    priority = 90

    def __init__(self, directory: str):
        self.directory = Path(directory)
        self.record: dict = {}

    def on_train_begin(self, trainer, **kwargs):
        clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
        if clear is not None:
            clear()
        self.record = {
            "pid": os.getpid(), "trial_id": _trial_id(), "started_at": time.time(),
            "at_begin": torch.cuda.memory_allocated(trainer.device),
            "parameter_bytes": sum(p.numel() * p.element_size() for p in trainer.model.parameters()),
        }

    def on_train_end(self, trainer, **kwargs):
        self.record["at_end"] = torch.cuda.memory_allocated(trainer.device)
        _write_json(self.directory / f"{self.record['trial_id']}.json", self.record)
