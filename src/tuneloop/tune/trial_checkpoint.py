"""A trial's checkpoint read back through Ray Tune's Checkpoint API, with a fallback to the newest
intact earlier one when the latest is damaged (truncated during a crash)."""

from __future__ import annotations

import re
import warnings

from tuneloop.checkpoints import DamagedCheckpoint, load_state

TUNE_CHECKPOINT_DIR = re.compile(r"^checkpoint_(\d+)$")


def load_tune_checkpoint(checkpoint, expected_hash: str | None = None, map_location="cpu") -> tuple[dict, str]:
    """Load a trial's `ray.tune.Checkpoint`; when it is damaged, fall back to the newest intact
    earlier checkpoint of the same trial (`checkpoint_<N>` beside it, on any storage), with a
    warning. Returns (state, the path loaded). A checkpoint of another experiment or format
    version is refused (CheckpointError), never skipped. Raises the first damage when none is intact.
    """
    from ray.tune import Checkpoint

    candidates = [checkpoint]
    parent, _, name = checkpoint.path.rstrip("/").rpartition("/")
    match = TUNE_CHECKPOINT_DIR.match(name)
    if match:
        from pyarrow.fs import FileSelector, FileType

        older = []
        for info in checkpoint.filesystem.get_file_info(FileSelector(parent)):
            found = TUNE_CHECKPOINT_DIR.match(info.base_name)
            if info.type == FileType.Directory and found and int(found.group(1)) < int(match.group(1)):
                older.append((int(found.group(1)), info.path))
        candidates += [Checkpoint(path, filesystem=checkpoint.filesystem) for _, path in sorted(older, reverse=True)]
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
