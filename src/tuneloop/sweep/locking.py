"""One driver per experiment directory: an OS lock on `<experiment dir>/.tuneloop.lock`.

`tuneloop sweep` and `tuneloop resume` hold an exclusive `fcntl.flock` on that file for the whole
run; a second driver on the same directory is refused before Ray starts (two drivers would
restore the same trials twice and write the same Tune snapshot and Optuna study). The kernel
drops the lock when its holder exits, however it exits (SIGKILL included): a crashed driver
never leaves a stale lock behind, and the lock file itself needs no cleaning up. Ray's processes
do not inherit the descriptor (Python opens files non-inheritable), so a driver's orphaned Ray
cannot keep the lock either.

The lock is local to one machine: with `s3://` storage, two drivers on two machines are not
kept apart (a local directory on each).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tuneloop.config.errors import UserError
from tuneloop.sweep.paths import LOCK_FILE


class DirectoryUnusable(Exception):
    """The experiment directory could not be created or its lock file written (`error`, an
    OSError): raised by `experiment_lock` before its block runs, never from inside it."""

    def __init__(self, error: OSError):
        super().__init__(str(error))
        self.error = error


def _missing(directory: Path) -> list[Path]:
    """`directory` and those of its parents that do not exist, deepest first."""
    return [d for d in (directory, *directory.parents) if not d.exists()]


def _remove_made(made: list[Path]) -> None:
    for path in made:  # deepest first; one that is no longer empty stays
        with contextlib.suppress(OSError):
            path.rmdir()


def probe_writable(directory: Path) -> None:
    """Raise the OSError that creating `directory` or writing a file in it gives; leave nothing
    behind (the directories made for the probe are removed again)."""
    directory = Path(directory)
    made = _missing(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=directory, prefix=".tuneloop-probe-")
        os.close(fd)
        os.unlink(name)
    finally:
        _remove_made(made)


@contextmanager
def experiment_lock(directory: Path, doing: str) -> Iterator[None]:
    """Hold the lock of `directory` (created if needed) while the block runs; `doing` ("run",
    "resumed") is what the message of a refused second driver says this one is doing.

    Raises UserError (exit 2) naming the holder's pid when another process holds it, and
    DirectoryUnusable when the directory or its lock file cannot be made. A block that
    wrote nothing into `directory` (a sweep refused after Ray connected) leaves nothing behind:
    the lock file and the directories this call created are removed again.
    """
    directory = Path(directory)
    created = _missing(directory)
    fd = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").split()
            pid = holder[0] if holder else "?"
            what = holder[1] if len(holder) > 1 else "used"
            os.close(fd)
            raise UserError(f"{directory}: is already being {what} by pid {pid}; wait for it or stop it",
                            file="") from None  # about the directory, not the experiment file
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {doing}\n".encode(), 0)
    except OSError as exc:
        if fd is not None:  # the lock file was opened (made, perhaps): taken away again
            os.close(fd)
            if not has_content(directory):
                with contextlib.suppress(OSError):
                    (directory / LOCK_FILE).unlink(missing_ok=True)
        _remove_made(created)
        raise DirectoryUnusable(exc) from exc
    try:
        yield
    finally:
        try:
            os.ftruncate(fd, 0)
            if not has_content(directory):  # still ours: no other driver can take it in between
                (directory / LOCK_FILE).unlink(missing_ok=True)
                _remove_made(created)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def clear_directory(directory: Path) -> None:
    """Delete everything in `directory` but its lock file (--overwrite, while holding the lock)."""
    directory = Path(directory)
    if not directory.is_dir():
        shutil.rmtree(directory, ignore_errors=True)  # a file or a dangling link
        return
    for entry in directory.iterdir():
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def has_content(directory: Path) -> bool:
    """Whether `directory` exists and holds anything but a lock file."""
    directory = Path(directory)
    return directory.is_dir() and any(entry.name != LOCK_FILE for entry in directory.iterdir())
