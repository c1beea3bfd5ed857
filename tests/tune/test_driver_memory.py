"""TrimHeap (tuneloop.tune.driver_memory): an ended trial's statistics dropped, and glibc's
malloc_trim in the sweep driver every N ended trials."""

from __future__ import annotations

import pytest

from tuneloop.tune import driver_memory
from tuneloop.tune.driver_memory import TrimHeap


def ended_trial(checkpoints: int = 3):
    """A Tune trial (a stub: no trainable) with per-metric statistics and `checkpoints` checkpoint
    results, as Tune holds one that ended."""
    import tempfile

    from ray.train._internal.session import _TrainingResult
    from ray.tune import Checkpoint
    from ray.tune.experiment import Trial

    trial = Trial("probe", config={"lr": 0.1}, stub=True)
    for epoch in range(checkpoints):
        trial.run_metadata.update_metric("val_loss", 1.0 / (epoch + 1), step=epoch + 1)
        trial.run_metadata.checkpoint_manager.register_checkpoint(_TrainingResult(
            checkpoint=Checkpoint.from_directory(tempfile.mkdtemp()), metrics={"epoch": epoch}))
    trial.run_metadata.last_result = {"epoch": checkpoints - 1, "val_loss": 1.0 / checkpoints}
    return trial


def test_an_ended_trial_keeps_its_last_result_and_latest_checkpoint_only():
    trial = ended_trial()
    before = len("".join(trial.get_json_state()))  # (the trial's JSON, its run metadata's JSON)
    TrimHeap().on_trial_complete(0, [trial], trial)
    metadata = trial.run_metadata
    assert metadata.metric_analysis == {} and metadata.metric_n_steps == {}
    assert [r.metrics["epoch"] for r in metadata.checkpoint_manager.best_checkpoint_results] == [2]
    assert metadata.checkpoint_manager.latest_checkpoint_result.metrics["epoch"] == 2
    assert metadata.last_result == {"epoch": 2, "val_loss": 1.0 / 3}
    assert len("".join(trial.get_json_state())) < before  # the snapshot of it shrank too


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
        trim.on_trial_complete(0, [], ended_trial(1))
    trim.on_trial_error(0, [], ended_trial(1))
    trim.on_trial_complete(0, [], ended_trial(1))
    assert calls == [0, 0]  # after the 3rd and the 6th ended trial, failures counted too
    assert real(0) in (0, 1)


def test_tunes_pickle_of_the_callbacks_keeps_the_count():
    import pickle

    trim = TrimHeap(every=8)
    trim.ended = 5
    assert pickle.loads(pickle.dumps(trim)).ended == 5  # Tune pickles callbacks into tuner.pkl
