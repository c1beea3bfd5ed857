"""`asha`: Ray's ASHA, whose rungs survive a resume."""

from __future__ import annotations

import pickle

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from tuneloop._io import atomic_write_bytes
from tuneloop.tune.schedulers.base import TIME_ATTR, PersistentState


class PersistentASHA(PersistentState, ASHAScheduler):
    """Ray's ASHA, whose rungs survive `Tuner.restore` (Ray does not save scheduler state).

    After every result that may change a rung its state is written to `state_path` (atomically);
    `bind` reads it back (on a restore: into the scheduler Tune unpickled from `tuner.pkl`).
    """

    def __init__(self, time_attr: str = TIME_ATTR, metric: str | None = None, mode: str | None = None,
                 max_t: int = 100, grace_period: int = 1, reduction_factor: float = 4, brackets: int = 1,
                 stop_last_trials: bool = True, state_path: str | None = None):
        super().__init__(time_attr=time_attr, metric=metric, mode=mode, max_t=max_t, grace_period=grace_period,
                         reduction_factor=reduction_factor, brackets=brackets, stop_last_trials=stop_last_trials)
        self.state_path = state_path
        self.stopped: set[str] = set()  # trials this scheduler stopped: they stay stopped after a restore

    def on_trial_result(self, tune_controller, trial, result):
        if trial.trial_id in self.stopped:  # stopped before a driver crash, resumed by the restore
            return TrialScheduler.STOP
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP and not result.get("trial_done"):  # ASHA's STOP at max_t ends
            self.stopped.add(trial.trial_id)  # the trial's own last epoch: that is no prune to remember
        self._persist()
        return decision

    def on_trial_complete(self, tune_controller, trial, result):
        super().on_trial_complete(tune_controller, trial, result)
        self._persist()

    def on_trial_remove(self, tune_controller, trial):
        super().on_trial_remove(tune_controller, trial)
        self._persist()

    def _persist(self) -> None:
        if self.state_path:
            atomic_write_bytes(self._state_file(), pickle.dumps(self.__getstate__()))

    def _load(self) -> None:
        path = self._state_file()
        if path is not None and path.exists():
            self.__dict__.update(pickle.loads(path.read_bytes()))
