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

import fnmatch
import json
import logging
import pickletools
import time
from pathlib import Path

from ray.tune import Callback

from tuneloop.storage import Storage, experiment_in_use

logger = logging.getLogger(__name__)

PATTERNS = ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl",
            "callback-states-*.pkl", "tuner.pkl")
BACKUP_DIR = ".tuneloop_state"
COMPLETE = "COMPLETE"


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

    def __init__(self):
        self._trial_storage = None
        self._last = 0.0
        self._interval = 0.0
        self._tuner_pkl: bytes | None = None  # written once, straight to the storage, by the Tuner

    def on_trial_start(self, iteration, trials, trial, **info):
        # Ray's StorageContext, for the driver's staging directory. (Not for the storage path: in
        # a restored run, trials made by the restored searcher carry the path they were saved with.)
        self._trial_storage = trial.storage

    def get_state(self):
        """Tune asks for callback state right after writing its snapshot: back it up now."""
        now = time.monotonic()
        if self._trial_storage is not None and now - self._last >= self._interval:
            try:
                self.backup()
            except OSError as exc:  # a backup must never end the sweep
                logger.warning("could not back up the experiment state: %s", exc)
            self._last = time.monotonic()
            self._interval = 5 * (self._last - now)
        return None

    def backup(self) -> None:
        context = self._trial_storage
        staging = Path(context.experiment_driver_staging_path)
        names = state_files(p.name for p in staging.iterdir() if p.is_file())
        if not names:
            return
        storage = experiment_in_use()
        if self._tuner_pkl is None and storage.exists("tuner.pkl"):
            data = storage.read_bytes("tuner.pkl")
            self._tuner_pkl = data if readable(data) else None
        contents = {name: (staging / name).read_bytes() for name in names}
        if self._tuner_pkl is not None:
            contents["tuner.pkl"] = self._tuner_pkl
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


def repair(storage: Storage) -> list[str]:
    """When a state file Tune restores from is damaged, put the newest complete backup generation
    in place of all of them. Returns the damaged files (empty: nothing to do).
    Raises RuntimeError when there is no intact backup to take."""
    damaged = damaged_files(storage)
    if not damaged:
        return []
    for _, name in reversed(_generations(storage)):
        folder = f"{BACKUP_DIR}/{name}"
        try:  # the marker (a JSON list of the generation's files) is written last
            names = json.loads(storage.read_bytes(f"{folder}/{COMPLETE}"))
            contents = {n: storage.read_bytes(f"{folder}/{n}") for n in names}
        except (OSError, ValueError):
            continue
        if not all(readable(data) for data in contents.values()):
            continue
        for current in state_files(storage.listdir()):
            if current != "tuner.pkl":
                storage.fs.delete_file(storage.path(current))
        for n, data in contents.items():
            storage.write_bytes(n, data)
        logger.warning("Tune's experiment state in %s was damaged (%s, a driver killed while it was "
                       "written); restored the backup of the last intact snapshot, trials continue "
                       "from the checkpoints it names", storage.uri or storage.root, ", ".join(damaged))
        return damaged
    raise RuntimeError(f"Tune's experiment state in {storage.uri or storage.root} is damaged "
                       f"({', '.join(damaged)}) and no intact backup exists in {BACKUP_DIR}/")


def relocate(storage: Storage) -> bool:
    """Point the saved search generator at where the experiment is now.

    Ray's restore moves the restored trials to the experiment's new place (a moved directory),
    but the search generator's saved experiment keeps the old storage path, and every trial it
    creates after the restore would write there (and fail if it is gone). Returns True when the
    newest `search_gen_state-*.json` was rewritten.
    """
    import ray.cloudpickle as cloudpickle

    names = [n for n in state_files(storage.listdir()) if n.startswith("search_gen_state-")]
    if not names:
        return False
    state = cloudpickle.loads(storage.read_bytes(names[0]))
    experiment = state.get("experiment")
    context = getattr(experiment, "storage", None)
    parent = storage.root.rpartition("/")[0]
    if context is None or (context.storage_fs_path == parent and
                           type(context.storage_filesystem) is type(storage.fs)):
        return False
    context.storage_fs_path = parent
    context.storage_filesystem = storage.fs
    experiment.spec["storage"] = context
    storage.write_bytes(names[0], cloudpickle.dumps(state))
    return True


def publish_final(trials, storage: Storage) -> None:
    """Copy the driver's staging directory to the storage once more after `fit()` returned.

    Tune's last upload can be skipped (one still running) or fail (a temporary file renamed away
    while listed), leaving the storage a snapshot behind: trials shown RUNNING that ended, the last
    result rows missing. Nothing writes to the staging directory any more at this point.
    """
    import pyarrow.fs

    if not trials:
        return
    staging = Path(trials[0].storage.experiment_driver_staging_path)
    if staging.is_dir():
        pyarrow.fs.copy_files(str(staging), storage.root, source_filesystem=pyarrow.fs.LocalFileSystem(),
                              destination_filesystem=storage.fs)


class TrialEnds(Callback):
    """Tune callback: which trials started in this run and which really ended (completed, stopped
    by a scheduler, failed). At an interrupt Tune stops the running trials without telling
    callbacks, and marks them TERMINATED: they are the started ones that did not end."""

    current: "TrialEnds | None" = None  # the instance of the fit in progress in this process

    def __init__(self):
        self.started: set[str] = set()
        self.ended: set[str] = set()

    def setup(self, **info):
        TrialEnds.current = self

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started.add(trial.trial_id)
        self.ended.discard(trial.trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.ended.add(trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.ended.add(trial.trial_id)

    def cut_short(self) -> set[str]:
        return self.started - self.ended
