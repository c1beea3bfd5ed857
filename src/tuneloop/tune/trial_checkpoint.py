"""A trial's checkpoint read back through Ray Tune's Checkpoint API: with a fallback to the newest
intact earlier one when the latest is damaged (truncated during a crash), and, after a driver
crash, the newer ones the trial wrote after Tune's last experiment snapshot (`adopt_newer`)."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

from tuneloop.checkpoints import STATE_FILE, DamagedCheckpoint, load_state

TUNE_CHECKPOINT_DIR = re.compile(r"^checkpoint_(\d+)$")


def _checkpoints_in(filesystem, directory: str) -> list[tuple[int, str]]:
    """(index, path) of every `checkpoint_<N>` directory in `directory`, sorted by index."""
    from pyarrow.fs import FileSelector, FileType

    found = []
    for info in filesystem.get_file_info(FileSelector(directory, allow_not_found=True)):
        match = TUNE_CHECKPOINT_DIR.match(info.base_name)
        if info.type == FileType.Directory and match:
            found.append((int(match.group(1)), info.path))
    return sorted(found)


def newest_in(filesystem, directory: str):
    """The `ray.tune.Checkpoint` of the newest `checkpoint_<N>` directory in `directory`, or None."""
    from ray.tune import Checkpoint

    found = _checkpoints_in(filesystem, directory)
    return Checkpoint(found[-1][1], filesystem=filesystem) if found else None


def _siblings(checkpoint) -> list[tuple[int, str]]:
    """(index, path) of every `checkpoint_<N>` directory beside `checkpoint` (its trial's), sorted."""
    return _checkpoints_in(checkpoint.filesystem, checkpoint.path.rstrip("/").rpartition("/")[0])


def _index(checkpoint) -> int | None:
    match = TUNE_CHECKPOINT_DIR.match(checkpoint.path.rstrip("/").rpartition("/")[2])
    return int(match.group(1)) if match else None


@dataclass
class Adopted:
    """A checkpoint of the trial's own, newer than the one Tune's (older) snapshot names."""

    state: dict
    path: str
    index: int  # its `checkpoint_<N>` number: the trial's next checkpoint must come after it
    named_epoch: int  # the epoch of the checkpoint Tune named (-1: none): Tune lost the reports after it


def adopt_newer(checkpoint, filesystem, trial_dir: str, expected_hash: str | None = None,
                map_location="cpu") -> Adopted | None:
    """The newest intact checkpoint in the trial's own directory (`trial_dir` on `filesystem`)
    that is newer than `checkpoint`, the one Tune restores the trial from (None: Tune names none);
    None when there is no such checkpoint, when `checkpoint` is another trial's (PBT's clone) or
    when it cannot be read (then `load_tune_checkpoint`'s fallback decides).

    Tune snapshots the experiment periodically (`tuneloop.tune.state.snapshot_policy`), so after a
    driver crash its state can name an older checkpoint than the trial's last one, or none: the
    trial then continues from where it really was instead of training those epochs again. A newer
    directory that is damaged or incomplete (being written at the crash) is skipped. One of
    another experiment is refused (CheckpointError), as in `load_tune_checkpoint`.
    """
    from ray.tune import Checkpoint

    named, named_epoch = -1, -1
    if checkpoint is not None:
        named = _index(checkpoint)
        if named is None or checkpoint.path.rstrip("/").rpartition("/")[0] != trial_dir.rstrip("/"):
            return None
    newer = [(index, path) for index, path in _checkpoints_in(filesystem, trial_dir) if index > named]
    if not newer:
        return None
    if checkpoint is not None:
        try:
            with checkpoint.as_directory() as directory:
                named_epoch = _epoch_of(directory)
        except (DamagedCheckpoint, FileNotFoundError):
            return None
    for index, path in reversed(newer):
        try:
            with Checkpoint(path, filesystem=filesystem).as_directory() as directory:
                state = load_state(directory, expected_hash, map_location)
        except (DamagedCheckpoint, FileNotFoundError):
            continue
        if int(state["epoch"]) > named_epoch:
            return Adopted(state, path, index, named_epoch)
    return None


def _epoch_of(directory: str) -> int:
    """The epoch of the checkpoint in `directory`, read without loading its tensors (mmap)."""
    import torch

    path = f"{directory}/{STATE_FILE}"
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise DamagedCheckpoint(f"{path}: cannot read ({exc})") from None


def load_tune_checkpoint(checkpoint, expected_hash: str | None = None, map_location="cpu") -> tuple[dict, str]:
    """Load a trial's `ray.tune.Checkpoint`; when it is damaged, fall back to the newest intact
    earlier checkpoint of the same trial (`checkpoint_<N>` beside it, on any storage), with a
    warning. Returns (state, the path loaded). A checkpoint of another experiment or format
    version is refused (CheckpointError), never skipped. Raises the first damage when none is intact.
    """
    from ray.tune import Checkpoint

    candidates = [checkpoint]
    named = _index(checkpoint)
    if named is not None:
        older = [path for index, path in _siblings(checkpoint) if index < named]
        candidates += [Checkpoint(path, filesystem=checkpoint.filesystem) for path in reversed(older)]
    first_damage = None
    for candidate in candidates:
        try:
            with candidate.as_directory() as directory:
                state = load_state(directory, expected_hash, map_location)
        except DamagedCheckpoint as exc:
            first_damage = first_damage or exc
            continue
        except FileNotFoundError as exc:  # the checkpoint directory itself is gone from storage
            first_damage = first_damage or DamagedCheckpoint(f"{candidate.path}: {exc}")
            continue
        if candidate is not checkpoint:
            warnings.warn(f"{first_damage}; resuming from the previous intact checkpoint {candidate.path} "
                          "(the epochs after it are trained again)", RuntimeWarning, stacklevel=2)
        return state, candidate.path
    raise first_damage
