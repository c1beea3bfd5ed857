"""TrimHeap (tuneloop.driver_memory): glibc's malloc_trim in the sweep driver every N ended trials."""

from __future__ import annotations

import pytest

from tuneloop.tune import driver_memory
from tuneloop.tune.driver_memory import TrimHeap


def test_the_heap_is_trimmed_every_n_ended_trials(monkeypatch):
    real = driver_memory._malloc_trim()
    if real is None:
        pytest.skip("this C library has no malloc_trim")
    calls = []

    def counting(pad):
        calls.append(pad)
        return real(pad)  # the real glibc call: returns 1 when memory was released, else 0

    monkeypatch.setattr(driver_memory, "_malloc_trim", lambda: counting)
    trim = TrimHeap(every=3)
    for _ in range(4):
        trim.on_trial_complete(0, [], None)
    trim.on_trial_error(0, [], None)
    trim.on_trial_complete(0, [], None)
    assert calls == [0, 0]  # after the 3rd and the 6th ended trial, failures counted too
    assert real(0) in (0, 1)


def test_tunes_pickle_of_the_callbacks_keeps_the_count():
    import pickle

    trim = TrimHeap(every=8)
    trim.ended = 5
    assert pickle.loads(pickle.dumps(trim)).ended == 5  # Tune pickles callbacks into tuner.pkl
