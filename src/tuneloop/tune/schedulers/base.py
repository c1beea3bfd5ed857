"""What tuneloop's schedulers share: their clock, and state that survives a resume.

Ray does not save a scheduler's state in its experiment snapshot. A `PersistentState` scheduler
keeps it in a file of the sweep's local directory (its name in `state_path`, listed in
`tuneloop.config.schedulers`), written atomically whenever it changes and read back by `bind`,
which the sweep driver calls on the scheduler it built or the one Tune unpickled on a restore (the
directory may have moved since: it is never pickled).
"""

from __future__ import annotations

from pathlib import Path

from tuneloop.storage import SweepPlace

TIME_ATTR = "training_iteration"  # epochs trained by the trial (1-based), the schedulers' clock


class PersistentState:
    """Mixin for a scheduler with a state file: `state_path` (a name in the sweep's local directory,
    or an absolute path), `bind(place)`, `_state_file()`; the subclass reads its state in `_load`."""

    state_path: str | None = None
    _directory: Path | None = None  # the sweep's local directory, set by bind (never pickled)

    def bind(self, place: SweepPlace) -> None:
        """The sweep's local directory is `place.directory` now: read the state kept there."""
        self._directory = Path(place.directory)
        self._load()

    def _state_file(self) -> Path | None:
        if not self.state_path:
            return None
        path = Path(self.state_path)
        if path.is_absolute():
            return path
        if self._directory is None:
            raise RuntimeError(f"{type(self).__name__} keeps its state in {self.state_path!r} of the sweep's "
                               "local directory, but it was not bound to a sweep (bind(place) first)")
        return self._directory / path

    def _load(self) -> None:
        """Read the state file back, when there is one."""

    def _load_unbound(self) -> None:
        """Read the state back at once when its file is an absolute path (no sweep to bind to)."""
        if self.state_path and Path(self.state_path).is_absolute():
            self._load()

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._load_unbound()  # a name in the sweep's directory: read back by bind

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_directory", None)
        return state
