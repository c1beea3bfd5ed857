"""`tuneloop resume`: an interrupted sweep continued where it stopped, wherever its directory is now.

    resume_sweep: its directory (fetched from S3 when given a URI) → lock → done? → Tune's state
                  repaired and relocated → drive the restored Tuner (`tuneloop.sweep.run.drive`)
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from tuneloop.config.errors import UserError
from tuneloop.config.loading import load_experiment
from tuneloop.config.schema import ExperimentConfig
from tuneloop.storage import Storage, is_remote
from tuneloop.sweep.checks import check_loggers
from tuneloop.sweep.paths import DONE_FILE, DRIVER_FILES, EXPERIMENT_FILE, experiment_dir, sweep_place
from tuneloop.sweep.run import drive, holding, interrupted_early, tune_state_exists


def resume_sweep(target: str | Path, *, address: str | None = None, quiet: bool = False) -> int:
    """Continue an interrupted sweep: finished trials stay, running ones continue from their last
    checkpoint, pending ones start; the searcher and the schedulers' saved state continue.

    `target` is the experiment's local directory, or its storage URI (`s3://bucket/prefix/name`):
    then the driver's files missing locally are fetched from the storage first. A second driver
    on the same directory is refused (tuneloop.sweep.locking).
    """
    from ray import tune

    from tuneloop.sweep.tuner import restore_tuner
    from tuneloop.tune.state import relocate, repair

    directory = local_directory(str(target))
    cfg = load_sweep(directory, shown=str(target))
    place = sweep_place(cfg)
    try:
        return _resume(cfg, place, directory, target, address=address, quiet=quiet)
    except KeyboardInterrupt:  # before Tune took over Ctrl-C
        return interrupted_early(cfg, place, resume=True)


def _resume(cfg: ExperimentConfig, place, directory: Path, target, *, address: str | None, quiet: bool) -> int:
    from tuneloop.sweep.tuner import restore_tuner
    from tuneloop.tune.state import relocate, repair

    with holding(directory, "resumed", key="EXPERIMENT_DIR", value=str(target)):  # before Ray starts
        if (directory / DONE_FILE).is_file():
            print(f"the sweep in {directory} already finished; nothing to resume "
                  f"(`tuneloop report {directory}` summarizes it)")
            return 0
        if not tune_state_exists(cfg, place):
            raise UserError("is not a tuneloop sweep directory (no Tune state in its storage)",
                            key="EXPERIMENT_DIR", value=place.storage.uri)
        check_loggers(cfg)
        try:
            damaged = repair(place.storage)
        except RuntimeError as exc:
            raise UserError(str(exc), key="EXPERIMENT_DIR", value=place.storage.uri) from None
        relocate(place.storage)
        if damaged:
            print(f"warning: Tune's experiment state was damaged ({', '.join(damaged)}; the driver was killed "
                  "while writing it): continuing from the last intact snapshot", flush=True)
        return drive(cfg, place, lambda: restore_tuner(cfg, place), address, quiet)


def load_sweep(directory: Path, shown: str | None = None) -> ExperimentConfig:
    """The experiment of the sweep whose local directory is `directory`, read where it is now
    (moved or fetched: storage_path, or local_dir with remote storage, is pointed there)."""
    if not (directory / EXPERIMENT_FILE).is_file():
        raise UserError("is not a tuneloop sweep directory (no experiment.yaml in it)",
                        key="EXPERIMENT_DIR", value=shown or str(directory))
    cfg = load_experiment(directory / EXPERIMENT_FILE)
    if experiment_dir(cfg) != directory:
        if is_remote(cfg.sweep.storage_path):
            cfg.sweep.local_dir = str(directory.parent)
        else:
            cfg.sweep.storage_path = str(directory.parent)
    return cfg


def local_directory(target: str) -> Path:
    """The local directory of the driver's files for a resume of `target` (a path or a URI)."""
    if not is_remote(target):
        return Path(target).expanduser().resolve()
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(target)
    remote = Storage(fs, path.rstrip("/"), target.rstrip("/"))
    if not remote.exists(EXPERIMENT_FILE):
        raise UserError("is not a tuneloop sweep directory (no experiment.yaml in it)",
                        key="EXPERIMENT_DIR", value=target)
    fetched = Path(tempfile.mkdtemp(prefix="tuneloop-resume-"))
    try:
        remote.download(fetched, [EXPERIMENT_FILE])
        directory = experiment_dir(load_experiment(fetched / EXPERIMENT_FILE))
    finally:
        shutil.rmtree(fetched, ignore_errors=True)
    present = set(os.listdir(directory)) if directory.is_dir() else set()
    remote.download(directory, [n for n in DRIVER_FILES if n not in present])  # local copies are newer
    return directory
