"""The sweep driver's memory: freed heap handed back to the operating system as trials end.

Tune keeps every trial in the driver, and the driver's result handling (a JSON snapshot of the
whole experiment after every result, Ray's messages) allocates and frees a great deal; glibc keeps
much of what was freed. In a 600-trial soak (benchmarks/soak.py) the driver's RSS grew by 267 KB
per trial; with `TrimHeap` (every 8 ended trials) by 167 KB; since Tune's results no longer read
every trial's history as the sweep ends (`_compat.results_without_histories`), by 49 KB. What stays
is mostly Tune's own record of each trial. Each call takes a few milliseconds; elsewhere than glibc
it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

from ray.tune import Callback

from tuneloop.tune import _compat


def _malloc_trim():
    """glibc's `malloc_trim`, or None where the C library has none (musl, macOS)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


class TrimHeap(Callback):
    """Tune callback: an ended trial's statistics dropped (`_compat.forget_ended_trial_details`),
    and `malloc_trim(0)` in the driver after every `every` ended trials."""

    def __init__(self, every: int = 8):
        self.every, self.ended = every, 0

    def on_trial_complete(self, iteration, trials, trial, **info):
        """Forget the trial's details; trim the heap every `every` ends."""
        self._ended(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        """Forget the trial's details; trim the heap every `every` ends."""
        self._ended(trial)

    def _ended(self, trial) -> None:
        _compat.forget_ended_trial_details(trial)
        self.ended += 1
        if self.ended % self.every == 0 and (trim := _malloc_trim()) is not None:
            trim(0)
