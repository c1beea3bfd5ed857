"""`TruthfulOptunaSearch`: Ray's OptunaSearch, but the Optuna study tells what really happened.

Vanilla OptunaSearch tells scheduler-stopped trials COMPLETE with their last value and loses
NaN trials. Here every trial ends in the study as:
- COMPLETE with its last value — it ran to its last epoch or stopped itself (early stopping);
- PRUNED with its intermediate values (the last one included) — a scheduler stopped it;
- FAIL — it raised, or its loss went NaN/inf.
Each report carries `trial_done` (its own end) set by PrunerCallback; Ray does not hand the
result that triggered a STOP to `on_trial_result`, so the last value is reported on completion.

Once Tune snapshots the experiment (`save`), a trial that started after its last snapshot is told
its end only at the next one: until then a killed driver's restore knows nothing of it, and its
Optuna trial must still be RUNNING, so that the restored searcher adopts it for a new trial
(`restore`) instead of the study keeping a trial that Tune's results have lost.
"""

from __future__ import annotations

import logging
import pickle

import optuna
from optuna.trial import TrialState
from ray.tune import Callback
from ray.tune.search.optuna import OptunaSearch

from tuneloop.outcome import finite as _finite
from tuneloop.outcome import outcome
from tuneloop.storage import SweepPlace
from tuneloop.tune import _compat

logger = logging.getLogger(__name__)

OPTUNA_STATES = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL}


class TruthfulOptunaSearch(OptunaSearch):
    """OptunaSearch with truthful trial states and intermediate values indexed by epoch."""

    _place: SweepPlace | None = None  # where the sweep is now (bind; never pickled)

    def __init__(self, *args, study_url: str | None = None, place: SweepPlace | None = None, **kwargs):
        """`study_url`: the Optuna storage URL (None: the sweep's own, `place.study_url`, looked up
        anew by `bind` whenever this searcher is unpickled, so a moved or fetched experiment resumes)."""
        self._study_url = study_url
        self._place = place
        super().__init__(*args, storage=optuna.storages.RDBStorage(self._url()), **kwargs)
        self._reported: dict[str, set[int]] = {}  # trial id → epochs told to Optuna
        self._last: dict[str, dict] = {}  # trial id → last result seen (a paused trial completes without one)
        self._unsaved: set[str] | None = None  # trials suggested since Tune's last snapshot (None: none yet)
        self._held: dict[str, tuple] = {}  # trial id → (value, state): ended, told at `save`

    def bind(self, place: SweepPlace | None) -> None:
        """The sweep is at `place` now: open its study again (after Tune unpickled this searcher)."""
        self._place = place
        pending = self.__dict__.pop("_pending", None)
        if pending is not None:
            _compat.reopen_optuna(self, self._url(), *pending)

    def _url(self) -> str:
        if self._study_url:
            return self._study_url
        if self._place is None:
            raise RuntimeError("TruthfulOptunaSearch keeps its study in the sweep's own storage, but it was not "
                               "bound to a sweep (bind(place) first)")
        return self._place.study_url

    def __getstate__(self) -> dict:
        """Everything but the live storage, study and place: Optuna trials are kept by their ids."""
        state = {k: v for k, v in self.__dict__.items() if k not in ("_pending", "_place")}
        if "_pending" in self.__dict__:  # unpickled and not bound yet: its state as it came
            return _compat.detached_again(state, self._pending)
        return _compat.detach_optuna(state, self)

    def __setstate__(self, state: dict) -> None:
        """Everything but the study, which `bind` opens where the sweep is now. A state saved before
        `_unsaved` and `_held` existed holds nothing back until the next snapshot, as before."""
        self._unsaved, self._held = None, {}
        self._pending = _compat.attach_optuna(self, state)
        self.__dict__.pop("_place", None)

    def save(self, checkpoint_path: str) -> None:
        """Tune's snapshot, which now holds every trial suggested so far: their ends are told."""
        held, self._held = self._held, {}
        for trial_id, (value, state) in held.items():
            self._tell(_compat.optuna_trials(self)[trial_id], value, state)
        self._unsaved = set()
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.__getstate__(), handle)

    def restore(self, checkpoint_path: str) -> None:
        """After a driver crash the saved searcher can lag the study: trials asked for after the
        last save are RUNNING in the study but unknown here (orphans). They are adopted by the next
        suggestions (same parameters, same Optuna trial), and the sampler is reseeded so that the
        pickled random state does not propose the same parameters again."""
        place = self._place  # Tune restores the saved state into this searcher, bound by the driver
        with open(checkpoint_path, "rb") as handle:
            self.__setstate__(pickle.load(handle))
        self.bind(place)
        study = _compat.optuna_study(self)
        in_study = {t.number: t for t in study.get_trials(deepcopy=False)}
        known = {tune_id: trial.number for tune_id, trial in _compat.optuna_trials(self).items()}
        known_numbers = set(known.values())
        self._orphans = [t for number, t in in_study.items()
                         if t.state == TrialState.RUNNING and number not in known_numbers]
        # epochs the study holds already (told before the crash): not told again when a restored
        # trial reports them once more (Optuna would warn that it ignores them)
        self._reported = {tune_id: set(in_study[number].intermediate_values)
                          for tune_id, number in known.items() if number in in_study}
        study.sampler.reseed_rng()

    def suggest(self, trial_id: str):
        orphans = getattr(self, "_orphans", None)
        if orphans and trial_id not in _compat.optuna_trials(self):
            orphan = orphans.pop(0)  # a kill between ask and its params may have left some unset
            adopted = _compat.adopt_optuna_trial(self, trial_id, orphan)
            self._reported[trial_id] = set(orphan.intermediate_values)
            logger.info("trial %s adopts Optuna trial %d asked for before the restore", trial_id, orphan.number)
            suggested = dict(adopted.params)
        else:
            suggested = super().suggest(trial_id)
        if suggested is not None and self._unsaved is not None:
            self._unsaved.add(trial_id)
        return suggested

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._last[trial_id] = result
        self._report(trial_id, result)

    def _report(self, trial_id: str, result: dict | None) -> None:
        ot_trial = _compat.optuna_trials(self).get(trial_id)
        if ot_trial is None or not result or trial_id in _compat.completed_trials(self):
            return
        value, step = result.get(self.metric), result.get("epoch", result.get("training_iteration"))
        if _finite(value) and step is not None:
            reported = self._reported.setdefault(trial_id, set())
            if int(step) not in reported:
                reported.add(int(step))
                try:
                    ot_trial.report(float(value), int(step))
                except optuna.exceptions.UpdateFinishedTrialError:
                    # told before a driver crash that the restored searcher state predates: the
                    # study already holds this trial's outcome; Tune re-runs it from its checkpoint.
                    _compat.completed_trials(self).add(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        trials, completed = _compat.optuna_trials(self), _compat.completed_trials(self)
        if trial_id in completed or trial_id not in trials:
            return
        result = result or self._last.pop(trial_id, None)
        self._report(trial_id, result)
        state, value = outcome(result, error, self.metric)
        completed.add(trial_id)
        if trial_id in (self._unsaved or ()):  # not in Tune's snapshot yet: told at the next
            self._held[trial_id] = (value, state)
            return
        self._tell(trials[trial_id], value, state)

    def _tell(self, ot_trial, value: float | None, state: str) -> None:
        try:
            _compat.optuna_study(self).tell(ot_trial, value, state=OPTUNA_STATES[state], skip_if_finished=True)
        except RuntimeError as exc:
            if not _compat.grid_exhausted(exc):  # GridSampler's study.stop(): the state was stored before
                raise


class StudyRecorder(Callback):
    """A Tune callback that records finished trials into the Optuna study (used with PBT, which
    runs without a searcher): params as the trial ended, intermediate values by epoch, true state."""

    _place: SweepPlace | None = None  # where the sweep is now (bind; never pickled)

    def __init__(self, study_url: str | None, study_name: str, metric: str, mode: str, distributions: dict,
                 place: SweepPlace | None = None):
        """`study_url`: the Optuna storage URL (None: the sweep's own, `place.study_url`; see `bind`)."""
        self.study_url, self.study_name, self.mode = study_url, study_name, mode
        self.metric, self.distributions = metric, distributions
        self.history: dict[str, dict[int, float]] = {}
        self._place = place

    def bind(self, place: SweepPlace) -> None:
        """The sweep is at `place` now (this callback may have been unpickled from an older place)."""
        self._place = place

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_place"}

    def _url(self) -> str:
        if self.study_url:
            return self.study_url
        if self._place is None:
            raise RuntimeError("StudyRecorder records into the sweep's own study, but it was not bound to a sweep")
        return self._place.study_url

    def setup(self, **info):
        optuna.create_study(storage=self._url(), study_name=self.study_name, load_if_exists=True,
                            direction="minimize" if self.mode == "min" else "maximize")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        if _finite(value):
            self.history.setdefault(trial.trial_id, {})[int(result.get("epoch", 0))] = float(value)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._record(trial, error=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._record(trial, error=True)

    def _record(self, trial, error: bool) -> None:
        state, value = outcome(trial.last_result, error, self.metric)
        params = {k: trial.config[k] for k in self.distributions if k in trial.config}
        try:
            study = optuna.load_study(storage=self._url(), study_name=self.study_name)
            study.add_trial(optuna.trial.create_trial(
                state=OPTUNA_STATES[state], value=value, params=params,
                distributions={k: _covering(self.distributions[k], v) for k, v in params.items()},
                intermediate_values=self.history.get(trial.trial_id, {}),
                user_attrs={"tune_trial_id": trial.trial_id}))
        except Exception as exc:  # recording must never stop the sweep
            logger.warning("could not record trial %s in the Optuna study: %s", trial.trial_id, exc)


def _covering(distribution, value):
    """`distribution`, widened to contain `value` (PBT's perturbations may leave the search range)."""
    if isinstance(distribution, (optuna.distributions.FloatDistribution, optuna.distributions.IntDistribution)):
        if not distribution.low <= value <= distribution.high:
            kind = type(distribution)
            step = {} if distribution.log else {"step": distribution.step}
            if step.get("step") is not None and isinstance(distribution, optuna.distributions.FloatDistribution):
                step = {}  # a perturbed value is off the step grid
            return kind(min(distribution.low, value), max(distribution.high, value), log=distribution.log, **step)
    return distribution
