"""Faults that test experiments inject into their trials (imported by path inside Ray workers)."""

from __future__ import annotations

from pathlib import Path

from tuneloop.callbacks import TrainingCallback


def wait_for(path: Path, timeout_s: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


class FailOnce(TrainingCallback):
    """On each trial's first attempt, raise at the start of epoch `epoch` (a crash Ray retries from
    the last checkpoint). With `damage_latest`, first truncate the trial's newest checkpoint in
    the local storage `experiment_dir`, as a crash during its copy would; with `foreign_latest`,
    make it look written by another experiment (another config hash)."""

    priority = 5

    def __init__(self, marker_dir: str, epoch: int, experiment_dir: str | None = None,
                 damage_latest: bool = False, foreign_latest: bool = False):
        self.marker_dir, self.epoch = Path(marker_dir), epoch
        self.experiment_dir, self.damage_latest, self.foreign_latest = experiment_dir, damage_latest, foreign_latest

    def on_train_epoch_begin(self, trainer, *, epoch, **kwargs):
        from ray import tune

        trial_id = tune.get_context().get_trial_id()
        marker = self.marker_dir / trial_id
        if epoch != self.epoch or marker.exists():
            return
        self.marker_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(epoch))
        if self.damage_latest or self.foreign_latest:
            checkpoints = sorted(Path(self.experiment_dir, f"trial_{trial_id}").glob("checkpoint_*"))
            state = checkpoints[-1] / "state.pt"
            wait_for(state)  # written in the background while this epoch starts
            if self.damage_latest:
                state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
            else:
                import torch

                content = torch.load(state, weights_only=True)
                torch.save({**content, "config_hash": "another-experiment"}, state)
        raise RuntimeError(f"FailOnce: crash at the start of epoch {epoch}")


class HoldAfterLastEpoch(TrainingCallback):
    """After a trial's last epoch was reported (and its final checkpoint written), write `marker`
    and hold the trial for `hold_s` seconds, once: the window in which a test kills the driver,
    between Tune's record of the last result and the trial's end."""

    def __init__(self, marker: str, hold_s: float = 60.0):
        self.marker, self.hold_s = Path(marker), hold_s
        self.last_epoch = -1

    def on_epoch_end(self, trainer, *, epoch, **kwargs):
        self.last_epoch = epoch

    def on_train_end(self, trainer, **kwargs):
        import time

        if self.last_epoch == trainer.epochs - 1 and not self.marker.exists():
            self.marker.write_text(str(self.last_epoch))
            time.sleep(self.hold_s)
