"""An intact copy of Tune's experiment state, and its repair before a resume.

Tune writes its snapshot (`experiment_state-*.json`, the searcher's `searcher-state-*.pkl` and
`search_gen_state-*.json`, `tuner.pkl`) atomically into a local staging directory, then copies the
files to the storage one by one. A driver killed during that copy leaves a truncated file in the
storage, and `Tuner.restore` then fails (EOFError in the searcher's state). `StateBackup` copies
each snapshot from the staging directory into `<experiment>/.tuneloop_state/g<N>/` (a generation
is complete once its `COMPLETE` marker is written, which comes last); `repair` puts the newest
complete generation back when a state file in the storage cannot be read.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import pickletools
import time
from pathlib import Path

from ray.tune import Callback

from tuneloop.storage import Storage, SweepPlace
from tuneloop.tune import _compat

logger = logging.getLogger(__name__)

PATTERNS = _compat.STATE_PATTERNS
BACKUP_DIR = ".tuneloop_state"
COMPLETE = "COMPLETE"


SNAPSHOT_PERIOD = "TUNE_GLOBAL_CHECKPOINT_S"  # Tune's setting: seconds between experiment snapshots


@contextlib.contextmanager
def snapshot_policy(pauses: bool):
    """While the block runs (the Tuner's `fit`), how often Tune snapshots the experiment (its
    whole state: every trial, the searcher), unless the user set TUNE_GLOBAL_CHECKPOINT_S.

    "auto" (Tune's own: every max(10 s, 19 × the last snapshot's time)) keeps the cost of a result
    flat however many trials the sweep has: a snapshot after every result costs time in
    proportion to the trials so far. A killed driver loses no training for it: a restored trial
    continues from the newest checkpoint in its own directory and sends Tune the reports it lost
    (`tuneloop.tune.trial.resume_point`). Schedulers that pause or clone trials (PBT,
    HyperBand) act on Tune's view of each trial's checkpoint: they keep a snapshot per result ("0").
    """
    if SNAPSHOT_PERIOD in os.environ:
        yield
        return
    os.environ[SNAPSHOT_PERIOD] = "0" if pauses else "auto"
    try:
        yield
    finally:
        os.environ.pop(SNAPSHOT_PERIOD, None)


def state_files(names) -> list[str]:
    """The newest file of each pattern (Tune restores the greatest name) among `names`."""
    chosen, names = [], list(names)
    for pattern in PATTERNS:
        matching = sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))
        if matching:
            chosen.append(matching[-1])
    return chosen


def readable(data: bytes) -> bool:
    """Whether `data` is a whole state file: JSON, or a pickle whose opcodes run to its STOP (read
    without building any object: nothing is imported or executed)."""
    try:
        json.loads(data)
        return True
    except ValueError:
        pass
    try:
        *_, (opcode, _, position) = pickletools.genops(data)
    except Exception:
        return False
    return opcode.name == "STOP" and position == len(data) - 1


class StateBackup(Callback):
    """Tune callback: after each experiment snapshot, copy it to a new backup generation in the
    storage; the last two generations are kept. A backup is skipped while less time than 5 times
    the last one took has passed (so a slow storage cannot hold the driver up): the backup lags
    the snapshot by at most that."""

    _place: SweepPlace | None = None  # where the sweep is now (bind; never pickled)

    def __init__(self):
        self._staging: Path | None = None
        self._last = 0.0
        self._interval = 0.0
        self._tuner_pkl: bytes | None = None  # written once, straight to the storage, by the Tuner

    def bind(self, place: SweepPlace) -> None:
        """The sweep's experiment directory on Tune's storage is `place.storage` now."""
        self._place = place

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_place"}

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        state.pop("_trial_storage", None)  # a sweep of tuneloop 0.1 kept the trial's StorageContext
        self.__dict__.update({"_staging": None, **state})

    def on_trial_start(self, iteration, trials, trial, **info):
        # the driver's staging directory, from a trial (Tune gives callbacks no other way to it)
        self._staging = _compat.experiment_staging_dir(trial)

    def get_state(self):
        """Tune asks for callback state right after writing its snapshot: back it up now."""
        now = time.monotonic()
        if self._staging is not None and self._place is not None and now - self._last >= self._interval:
            try:
                self.backup()
            except OSError as exc:  # a backup must never end the sweep
                logger.warning("could not back up the experiment state: %s", exc)
            self._last = time.monotonic()
            self._interval = 5 * (self._last - now)
        return None

    def backup(self) -> None:
        staging = self._staging
        names = state_files(p.name for p in staging.iterdir() if p.is_file())
        if not names:
            return
        storage = self._place.storage
        if self._tuner_pkl is None and storage.exists(_compat.TUNER_FILE):
            data = storage.read_bytes(_compat.TUNER_FILE)
            self._tuner_pkl = data if readable(data) else None
        contents = {name: (staging / name).read_bytes() for name in names}
        if self._tuner_pkl is not None:
            contents[_compat.TUNER_FILE] = self._tuner_pkl
        generations = _generations(storage)
        number = generations[-1][0] + 1 if generations else 0
        target = f"{BACKUP_DIR}/g{number}"
        for name, data in contents.items():  # complete once COMPLETE, written last, exists
            storage.write_bytes(f"{target}/{name}", data, atomic=False)
        storage.write_bytes(f"{target}/{COMPLETE}", json.dumps(list(contents)).encode(), atomic=False)
        for _, old in generations[:-1]:
            storage.delete_dir(f"{BACKUP_DIR}/{old}")


def _generations(storage: Storage) -> list[tuple[int, str]]:
    found = []
    for name in storage.listdir(BACKUP_DIR):
        if name.startswith("g") and name[1:].isdigit():
            found.append((int(name[1:]), name))
    return sorted(found)


def damaged_files(storage: Storage) -> list[str]:
    """The state files Tune would restore from that cannot be read."""
    return [name for name in state_files(storage.listdir()) if not readable(storage.read_bytes(name))]


def restorable_state(storage: Storage) -> dict[str, bytes] | None:
    """The state files a resume restores from: those in the storage when none is damaged (None),
    else the newest backup generation that is complete and readable (empty when there is none)."""
    if not damaged_files(storage):
        return None
    for _, name in reversed(_generations(storage)):
        folder = f"{BACKUP_DIR}/{name}"
        try:  # the marker (a JSON list of the generation's files) is written last
            names = json.loads(storage.read_bytes(f"{folder}/{COMPLETE}"))
            contents = {n: storage.read_bytes(f"{folder}/{n}") for n in names}
        except (OSError, ValueError):
            continue
        if all(readable(data) for data in contents.values()):
            return contents
    return {}


def repair(storage: Storage) -> list[str]:
    """When a state file Tune restores from is damaged, put the newest complete backup generation
    in place of all of them. Returns the damaged files (empty: nothing to do).
    Raises RuntimeError when there is no intact backup to take."""
    damaged = damaged_files(storage)
    contents = restorable_state(storage)
    if contents is None:
        return []
    if not contents:
        raise RuntimeError(f"Tune's experiment state in {storage.uri or storage.root} is damaged "
                           f"({', '.join(damaged)}) and no intact backup exists in {BACKUP_DIR}/")
    for current in state_files(storage.listdir()):
        if current != _compat.TUNER_FILE:
            storage.fs.delete_file(storage.path(current))
    for name, data in contents.items():
        storage.write_bytes(name, data)
    logger.warning("Tune's experiment state in %s was damaged (%s, a driver killed while it was "
                   "written); restored the backup of the last intact snapshot, trials continue "
                   "from the checkpoints it names", storage.uri or storage.root, ", ".join(damaged))
    return damaged


def relocate(storage: Storage) -> bool:
    """Point the saved search generator at where the experiment is now.

    Ray's restore moves the restored trials to the experiment's new place (a moved directory),
    but the search generator's saved experiment keeps the old storage path, and every trial it
    creates after the restore would write there (and fail if it is gone). Returns True when the
    newest `search_gen_state-*.json` was rewritten.
    """
    names = [n for n in state_files(storage.listdir()) if n.startswith(_compat.SEARCH_GENERATOR_STATE)]
    if not names:
        return False
    relocated = _compat.relocate_search_generator(storage.read_bytes(names[0]), storage.fs,
                                                  storage.root.rpartition("/")[0])
    if relocated is None:
        return False
    storage.write_bytes(names[0], relocated)
    return True


def publish_final(trials, storage: Storage) -> None:
    """Copy the driver's staging directory to the storage once more after `fit()` of a sweep whose
    trials all ended.

    Tune's last upload can be skipped (one still running) or fail (a temporary file renamed away
    while listed), leaving the storage a snapshot behind: trials shown RUNNING that ended, the last
    result rows missing. Nothing writes to the staging directory any more at this point. (Not after
    an interrupt: Tune stops the trials after its last snapshot and still takes the results that
    arrive meanwhile; the storage keeps the state that snapshot names, which a resume continues.)
    """
    import pyarrow.fs

    if not trials:
        return
    staging = _compat.experiment_staging_dir(trials[0])
    if staging.is_dir():
        pyarrow.fs.copy_files(str(staging), storage.root, source_filesystem=pyarrow.fs.LocalFileSystem(),
                              destination_filesystem=storage.fs)


class TrialEnds(Callback):
    """Tune callback: which trials started in this run and which really ended (completed, stopped
    by a scheduler, failed), and every trial of the experiment once it ended (`trials`, for the
    driver's summary). At an interrupt Tune stops the running trials without telling callbacks,
    and marks them TERMINATED: they are the started ones that did not end."""

    def __init__(self):
        self.started: set[str] = set()
        self.ended: set[str] = set()
        self.trials: list = []  # Tune's trials, set when the experiment ends

    def setup(self, **info):
        self.started, self.ended, self.trials = set(), set(), []  # this run's (a restored one starts anew)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started.add(trial.trial_id)
        self.ended.discard(trial.trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.ended.add(trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.ended.add(trial.trial_id)

    def on_experiment_end(self, trials, **info):
        self.trials = list(trials)

    def cut_short(self) -> set[str]:
        return self.started - self.ended

    def all_ended(self) -> bool:
        """Whether every trial of the experiment ended (none cut short by an interrupt, none left
        pending or running)."""
        return not self.cut_short() and all(t.status in ("TERMINATED", "ERROR") for t in self.trials)

    def __getstate__(self) -> dict:
        return {"started": set(), "ended": set(), "trials": []}  # nothing of a run outlives it
