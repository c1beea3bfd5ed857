"""Checkpoint contents, atomic files, safe loading, and exact resume on CPU."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from tuneloop import checkpointing
from tuneloop.callbacks import (CheckpointCallback, EarlyStoppingCallback, LossPredictionCallback,
                                OverfitDetectionCallback, TrainingCallback)
from tuneloop.checkpointing import (CheckpointError, atomic_write_bytes, collect_state, load_state, restore_state,
                                    save_state)
from tuneloop.data import TensorBatches
from tuneloop.trainer import Trainer


class Losses(TrainingCallback):
    priority = 99

    def __init__(self):
        self.rows = []

    def on_epoch_end(self, trainer, *, epoch, train_loss, val_loss, **kwargs):
        self.rows.append((epoch, train_loss, val_loss, trainer.lr))


def build(checkpoint_dir=None):
    """A fresh model/optimizer/scheduler/callbacks with dropout, shuffling and a per-epoch LR change."""
    torch.manual_seed(123)
    model = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                torch.nn.Linear(32, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    losses = Losses()
    callbacks = [EarlyStoppingCallback(patience=50), LossPredictionCallback(8), OverfitDetectionCallback(0, 1),
                 losses]
    if checkpoint_dir is not None:
        callbacks.append(CheckpointCallback(checkpoint_dir, keep_last_k=10, config_hash="abc"))
    trainer = Trainer(model, optimizer, scheduler, torch.nn.CrossEntropyLoss(), callbacks)
    generator = torch.Generator().manual_seed(7)
    x, y = torch.randn(200, 6, generator=generator), torch.randint(0, 3, (200,), generator=generator)
    train = TensorBatches(x[:150], y[:150], 16, shuffle=True, seed=3)
    val = TensorBatches(x[150:], y[150:], 50)
    return trainer, train, val, losses


class Interrupt(TrainingCallback):
    """Stops the run like Ctrl-C right after epoch `at` was checkpointed and recorded."""

    priority = 100

    def __init__(self, at):
        self.at = at

    def on_epoch_end(self, trainer, *, epoch, **kwargs):
        if epoch == self.at:
            raise KeyboardInterrupt


@pytest.mark.parametrize("cut_after", [0, 2, 5])
def test_exact_resume_is_bitwise_on_cpu(tmp_path, cut_after):
    whole, train, val, whole_losses = build()
    whole.train(train, val, epochs=8)

    first, train, val, first_losses = build(tmp_path / "ck")
    first.callbacks = type(first.callbacks)([*first.callbacks, Interrupt(cut_after)])
    with pytest.raises(KeyboardInterrupt):
        first.train(train, val, epochs=8)

    torch.manual_seed(999)  # the resumed process starts with other RNG states: the checkpoint restores them
    resumed, train, val, resumed_losses = build()
    start = restore_state(resumed, load_state(tmp_path / "ck" / f"epoch_{cut_after}", expected_hash="abc"))
    assert start == cut_after + 1
    resumed.train(train, val, epochs=8, start_epoch=start)
    assert first_losses.rows == whole_losses.rows[:cut_after + 1]
    # bitwise: the same floats and the same LR in every epoch, none repeated, none skipped
    assert resumed_losses.rows == whole_losses.rows[cut_after + 1:]


def test_state_holds_everything_and_loads_weights_only(tmp_path):
    trainer, train, val, _ = build()
    trainer.train(train, val, epochs=10)
    random.random(), np.random.rand(), torch.rand(1)
    state = collect_state(trainer, 9, "h1")
    save_state(state, tmp_path / "c")
    loaded = load_state(tmp_path / "c", expected_hash="h1")
    assert loaded["epoch"] == 9 and loaded["format_version"] == checkpointing.FORMAT_VERSION
    assert set(loaded["callbacks"]) == {"EarlyStoppingCallback", "LossPredictionCallback",
                                        "OverfitDetectionCallback"}
    prediction = next(c for c in trainer.callbacks if isinstance(c, LossPredictionCallback))
    assert loaded["callbacks"]["LossPredictionCallback"]["losses"] == prediction.losses
    assert isinstance(loaded["rng"]["torch"], torch.Tensor) and isinstance(loaded["rng"]["numpy"], torch.Tensor)
    expected = (random.random(), np.random.rand(), torch.rand(1))
    checkpointing.set_rng_state(loaded["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_bad_checkpoints_name_the_file(tmp_path):
    trainer, _, _, _ = build()
    path = save_state(collect_state(trainer, 0, "h1"), tmp_path / "ok")
    with pytest.raises(CheckpointError, match="another experiment"):
        load_state(tmp_path / "ok", expected_hash="other")
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "state.pt").write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cut/state.pt: cannot read checkpoint"):
        load_state(tmp_path / "cut")
    old = collect_state(trainer, 0)
    old["format_version"] = 0
    save_state(old, tmp_path / "old")
    with pytest.raises(CheckpointError, match=r"old/state.pt: format_version 1 expected, but got 0"):
        load_state(tmp_path / "old")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_state(tmp_path / "missing")


def test_unsafe_pickles_are_refused(tmp_path):
    import pickle

    (tmp_path / "evil").mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    torch.save({"format_version": 1, "x": Evil()}, tmp_path / "evil" / "state.pt", pickle_module=pickle)
    with pytest.raises(CheckpointError):
        load_state(tmp_path / "evil")


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")

    class Broken(bytes):
        pass

    with pytest.raises(TypeError):
        atomic_write_bytes(target, object())  # fails while writing
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]  # no temp file left behind
