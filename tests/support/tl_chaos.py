"""Worker-process kills for test experiments (imported by path inside Ray workers).

`ChaosProbe` is tl_testing's Probe with a `chaos` setting the search space can vary per trial:
"none", "inside-N" (the trial's worker kills itself with SIGKILL at the start of epoch
`kill_epoch`, on each of its first N attempts) or "outside-N" (the worker writes its pid to
`<marker_dir>/<trial id>.<attempt>.pid` and waits there; the test kills it from outside).
`KillWorker` is the callback that does it; every attempt that reaches `kill_epoch` leaves a
marker file `<trial id>.<attempt>`, so a test can count the attempts Ray made.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tl_testing import Probe

from tuneloop.callbacks import CheckpointCallback, TrainingCallback


class ChaosProbe(Probe):
    def __init__(self, chaos: str = "none", **kwargs):
        super().__init__(**kwargs)
        how, _, times = chaos.partition("-")
        self.chaos_how, self.chaos_times = how, int(times or 0)


class KillWorker(TrainingCallback):
    priority = 5

    def __init__(self, marker_dir: str, kill_epoch: int):
        self.marker_dir, self.kill_epoch = Path(marker_dir), kill_epoch

    def on_train_epoch_begin(self, trainer, *, epoch, **kwargs):
        from ray import tune

        how, times = getattr(trainer.model, "chaos_how", "none"), getattr(trainer.model, "chaos_times", 0)
        if epoch != self.kill_epoch or how == "none":
            return
        trial_id = tune.get_context().get_trial_id()
        self.marker_dir.mkdir(parents=True, exist_ok=True)
        attempt = len(list(self.marker_dir.glob(f"{trial_id}.*[0-9]")))
        (self.marker_dir / f"{trial_id}.{attempt}").write_text(str(os.getpid()))
        if attempt >= times:
            return
        # killed after the last epoch's checkpoint is on disk, as the tests that use this expect (a
        # trial writes it in the background: a kill during that write resumes from the one before)
        for callback in trainer.callbacks:
            if isinstance(callback, CheckpointCallback):
                callback._writer.wait()
        if how == "inside":
            os.kill(os.getpid(), signal.SIGKILL)
        pid_file = self.marker_dir / f"{trial_id}.{attempt}.pid"
        (self.marker_dir / f".{trial_id}.{attempt}.tmp").write_text(str(os.getpid()))
        os.replace(self.marker_dir / f".{trial_id}.{attempt}.tmp", pid_file)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the test kills this process from outside
            time.sleep(0.05)
        raise RuntimeError("KillWorker: nobody killed this worker within 60 s")


class Gate(TrainingCallback):
    """Holds each trial at the start of epoch `from_epoch` and later ones while the file `gate`
    exists (the test opens it by deleting the file); appends a line to `<gate>.waits` each time
    a trial starts waiting, so a test knows a driver is up and its trial running."""

    priority = 5

    def __init__(self, gate: str, from_epoch: int):
        self.gate, self.from_epoch = Path(gate), from_epoch

    def on_train_epoch_begin(self, trainer, *, epoch, **kwargs):
        if epoch < self.from_epoch or not self.gate.exists():
            return
        with open(f"{self.gate}.waits", "a") as handle:
            handle.write(f"{os.getpid()} {epoch}\n")
        while self.gate.exists():
            time.sleep(0.05)


class KillRank(TrainingCallback):
    """A distributed trial's worker of rank `rank` kills itself (SIGKILL) at the start of epoch
    `epoch`, once in the whole sweep: the file `marker` records it (with the epochs that rank had
    trained, so a test can tell where the restart began)."""

    priority = 5

    def __init__(self, rank: int, epoch: int, marker: str):
        self.rank, self.epoch, self.marker = rank, epoch, Path(marker)

    def on_train_epoch_begin(self, trainer, *, epoch, **kwargs):
        if trainer.rank != self.rank or epoch != self.epoch or self.marker.exists():
            return
        self.marker.write_text(f"{os.getpid()} {epoch}")
        os.kill(os.getpid(), signal.SIGKILL)


class RankLog(TrainingCallback):
    """Appends one line per trained epoch and rank to `path`: the rank, its process and Ray node."""

    priority = 60

    def __init__(self, path: str):
        self.path = path

    def on_epoch_end(self, trainer, *, epoch, **kwargs):
        import ray

        with open(self.path, "a") as handle:
            handle.write(f'{{"rank": {trainer.rank}, "epoch": {epoch}, "pid": {os.getpid()}, '
                         f'"node": "{ray.get_runtime_context().get_node_id()}"}}\n')


class PacedEnds(TrainingCallback):
    """Slows epochs down (`seconds` each) when the learning rate is below `slow_below_lr`, so that a
    scheduler's STOP can reach a distributed trial's workers before its last epoch; at the end of
    training appends `{"rank", "lr", "epochs", "stop_reason"}` to `path` (one line per rank)."""

    priority = 60

    def __init__(self, path: str, slow_below_lr: float, seconds: float):
        self.path, self.slow_below_lr, self.seconds = path, slow_below_lr, seconds
        self.epochs: list[int] = []

    def on_epoch_end(self, trainer, *, epoch, **kwargs):
        self.epochs.append(epoch)
        if trainer.lr < self.slow_below_lr:
            time.sleep(self.seconds)

    def on_train_end(self, trainer, **kwargs):
        import json

        with open(self.path, "a") as handle:
            handle.write(json.dumps({"rank": trainer.rank, "lr": trainer.lr, "epochs": self.epochs,
                                     "stop_reason": trainer.stop_reason}) + "\n")
