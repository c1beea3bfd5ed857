"""A trial's checkpoint read back through Ray Tune's Checkpoint API: a damaged latest one falls
back to the newest intact earlier one; one of another experiment is refused, never skipped."""

from __future__ import annotations

import pytest
import torch

from tuneloop.checkpoints import CheckpointError, DamagedCheckpoint, collect_state, save_state
from tuneloop.trainer import Trainer
from tuneloop.tune.trial_checkpoint import load_tune_checkpoint


def trial_checkpoints(tmp_path, epochs, cfg_hash="h1"):
    """Tune-style `checkpoint_<N>` directories of one trial, one per epoch, as ray.tune.Checkpoints."""
    from ray.tune import Checkpoint

    model = torch.nn.Linear(3, 2)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), None, torch.nn.MSELoss(), [])
    return [Checkpoint.from_directory(str(save_state(collect_state(trainer, epoch, cfg_hash),
                                                     tmp_path / f"checkpoint_{epoch:06d}").parent))
            for epoch in epochs]


def test_a_damaged_latest_tune_checkpoint_falls_back_to_the_previous_intact_one(tmp_path):
    checkpoints = trial_checkpoints(tmp_path, range(4))
    latest = tmp_path / "checkpoint_000003" / "state.pt"
    latest.write_bytes(latest.read_bytes()[:100])
    (tmp_path / "checkpoint_000002" / "state.pt").unlink()  # gone as well: the one before is taken
    with pytest.warns(RuntimeWarning) as warned:
        state, path = load_tune_checkpoint(checkpoints[3], expected_hash="h1")
    assert state["epoch"] == 1 and path.endswith("checkpoint_000001")
    message = str(warned[0].message)
    assert str(latest) in message and "truncated or corrupt" in message and "checkpoint_000001" in message

    intact, path = load_tune_checkpoint(checkpoints[1], expected_hash="h1")
    assert intact["epoch"] == 1 and path.endswith("checkpoint_000001")  # an intact one: no fallback


def test_a_tune_checkpoint_of_another_experiment_is_refused_not_skipped(tmp_path):
    checkpoints = trial_checkpoints(tmp_path, range(2), cfg_hash="model-a")
    with pytest.raises(CheckpointError) as info:
        load_tune_checkpoint(checkpoints[1], expected_hash="model-b")
    assert "checkpoint_000001/state.pt: written by another experiment" in str(info.value)
    assert "'model-a'" in str(info.value) and "'model-b'" in str(info.value)


def test_when_no_tune_checkpoint_is_intact_the_first_damage_is_raised(tmp_path):
    checkpoints = trial_checkpoints(tmp_path, range(2))
    for epoch in range(2):
        (tmp_path / f"checkpoint_{epoch:06d}" / "state.pt").write_bytes(b"not a zip")
    with pytest.raises(DamagedCheckpoint, match=r"checkpoint_000001/state.pt: cannot read"):
        load_tune_checkpoint(checkpoints[1])


def adopted(tmp_path, named, expected_hash="h1", trial_dir=None):
    import pyarrow.fs

    from tuneloop.tune.trial_checkpoint import adopt_newer

    return adopt_newer(named, pyarrow.fs.LocalFileSystem(), str(trial_dir or tmp_path), expected_hash=expected_hash)


def test_a_restored_trial_adopts_its_newest_intact_checkpoint_after_the_one_tune_names(tmp_path):
    """Tune's snapshot named checkpoint 1 (or none); the trial had written up to 4 when the driver
    died, the newest being cut short by the crash: it continues from 3."""
    checkpoints = trial_checkpoints(tmp_path, range(5))
    newest = tmp_path / "checkpoint_000004" / "state.pt"
    newest.write_bytes(newest.read_bytes()[:200])
    found = adopted(tmp_path, checkpoints[1])
    assert (found.state["epoch"], found.index, found.named_epoch) == (3, 3, 1)
    assert found.path.endswith("checkpoint_000003")
    found = adopted(tmp_path, None)  # Tune's snapshot came before the trial's first checkpoint
    assert (found.state["epoch"], found.index, found.named_epoch) == (3, 3, -1)
    (tmp_path / "checkpoint_000003" / "state.pt").unlink()  # a directory whose file never came
    assert adopted(tmp_path, checkpoints[1]).index == 2


def test_nothing_is_adopted_when_tunes_checkpoint_is_the_newest_or_another_trials(tmp_path):
    own, other = tmp_path / "trial_a", tmp_path / "trial_b"
    checkpoints = trial_checkpoints(own, range(3))
    trial_checkpoints(other, range(5))
    assert adopted(tmp_path, checkpoints[2], trial_dir=own) is None  # Tune's is the newest
    assert adopted(tmp_path, checkpoints[1], trial_dir=other) is None  # PBT's clone of another trial
    assert adopted(tmp_path, None, trial_dir=tmp_path / "trial_c") is None  # no directory yet
    with pytest.raises(CheckpointError, match="written by another experiment"):
        adopted(tmp_path, checkpoints[0], expected_hash="model-b", trial_dir=own)
