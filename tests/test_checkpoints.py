"""Checkpoint contents and files (tuneloop.checkpointing): what a state holds and how it round-trips,
atomic writes under real write failures, safe loading, and exact resume on CPU."""

from __future__ import annotations

import os
import random
import resource

import numpy as np
import pytest
import torch

from tuneloop import checkpoints as checkpointing
from tuneloop._io import atomic_write_bytes
from tuneloop.callbacks import (CheckpointCallback, EarlyStoppingCallback, GradientClippingCallback, LossPredictionCallback,
                                OverfitDetectionCallback, TrainingCallback)
from tuneloop.checkpoints import CheckpointError, CheckpointManager, collect_state, load_state, restore_state, save_state
from tuneloop.metrics import accuracy
from tuneloop.recipes.digits import MLP
from tuneloop.trainer import Trainer
from tuneloop.training.data import make_loader
from tl_testing import assert_state_dicts_equal


class Seen(TrainingCallback):
    """Per epoch, after every other callback: the losses, the LR, the shared signals (bitwise)."""

    priority = 99

    def __init__(self):
        self.rows = []

    def on_epoch_end(self, trainer, *, epoch, train_loss, val_loss, metrics, **kwargs):
        self.rows.append((epoch, train_loss, val_loss, metrics["val_accuracy"], trainer.lr,
                          trainer._loss_prediction, trainer._overfit_gap_ratio))


SCHEDULES = {
    "step": lambda optimizer: torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7),
    # needs each epoch's val_loss; threshold 0.3: hardly an epoch improves enough, the LR halves often
    "plateau": lambda optimizer: torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=0.5, patience=0, threshold=0.3),
    "cosine": lambda optimizer: torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=5),
}


def build(digits, checkpoint_dir=None, seed=123, schedule="step", **options):
    """Fresh model/optimizer/scheduler/callbacks: dropout, shuffled batches, the LR changing every epoch."""
    torch.manual_seed(seed)
    model = MLP(hidden=48, layers=2, dropout=0.3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.02)
    scheduler = SCHEDULES[schedule](optimizer)
    seen = Seen()
    callbacks = [EarlyStoppingCallback(patience=50, min_delta=1e-3), LossPredictionCallback(12),
                 OverfitDetectionCallback(warmup_epochs=0, window_size=1), seen]
    if checkpoint_dir is not None:
        callbacks.append(CheckpointCallback(checkpoint_dir, keep_last_k=20, config_hash="abc"))
    if options.pop("clip", None):
        callbacks.append(GradientClippingCallback(0.5))
    trainer = Trainer(model, optimizer, scheduler, torch.nn.CrossEntropyLoss(), callbacks,
                      metrics={"accuracy": accuracy}, **options)
    train_set, val_set = digits
    train = make_loader(train_set, 128, shuffle=True, seed=5, device="cpu")
    val = make_loader(val_set, 256, shuffle=False, seed=5, device="cpu")
    return trainer, train, val, seen


def callback(trainer, cls):
    return next(c for c in trainer.callbacks if isinstance(c, cls))


# --- exact resume ---------------------------------------------------------------------------

@pytest.mark.parametrize("schedule", SCHEDULES)
def test_exact_resume_from_the_epoch_2_checkpoint_is_bitwise(digits, tmp_path, schedule):
    whole, train, val, whole_seen = build(digits, schedule=schedule)
    whole.train(train, val, epochs=6)
    lrs = [row[4] for row in whole_seen.rows]
    assert len(set(lrs)) >= 3  # the schedule really moves

    first, train, val, first_seen = build(digits, tmp_path / "ck", schedule=schedule)
    first.train(train, val, epochs=3)
    assert first_seen.rows == whole_seen.rows[:3]

    torch.manual_seed(999)  # a new process: other RNG states, fresh objects; the checkpoint restores all
    random.seed(999)
    resumed, train, val, resumed_seen = build(digits, seed=7, schedule=schedule)
    start = restore_state(resumed, load_state(tmp_path / "ck" / "epoch_2", expected_hash="abc"))
    assert start == 3
    assert resumed.lr == lrs[3]  # the schedule is in step before the first resumed epoch
    if schedule == "step":
        assert lrs[3] == pytest.approx(0.02 * 0.7 ** 3)
    resumed.train(train, val, epochs=6, start_epoch=3)
    assert [row[0] for row in resumed_seen.rows] == [3, 4, 5]  # none repeated, none skipped
    assert resumed_seen.rows == whole_seen.rows[3:]  # bitwise: losses, accuracy and LR of every epoch
    assert_state_dicts_equal(resumed.model.state_dict(), whole.model.state_dict())
    assert_state_dicts_equal(resumed.optimizer.state_dict(), whole.optimizer.state_dict())
    assert resumed.scheduler.state_dict() == whole.scheduler.state_dict()


@pytest.mark.parametrize("options", [{"precision": "fp16", "accumulate_steps": 3, "clip": True},
                                     {"precision": "bf16", "accumulate_steps": 2}])
def test_exact_resume_with_mixed_precision_accumulation_and_clipping(digits, tmp_path, options):
    """The fp16 loss scaler's state (its scale, its growth tracker) is in the checkpoint."""
    whole, train, val, whole_seen = build(digits, **options)
    whole.train(train, val, epochs=4)
    first, train, val, _ = build(digits, tmp_path / "ck", **options)
    first.train(train, val, epochs=2)
    state = load_state(tmp_path / "ck" / "epoch_1", expected_hash="abc")
    assert (state["scaler"] is not None) == (options["precision"] == "fp16")
    torch.manual_seed(999)
    resumed, train, val, resumed_seen = build(digits, seed=7, **options)
    assert restore_state(resumed, state) == 2
    resumed.train(train, val, epochs=4, start_epoch=2)
    assert resumed_seen.rows == whole_seen.rows[2:]
    assert_state_dicts_equal(resumed.model.state_dict(), whole.model.state_dict())
    assert resumed.scaler.state_dict() == whole.scaler.state_dict()


class Interrupt(TrainingCallback):
    """Ends the process like Ctrl-C right after epoch `at` was checkpointed."""

    priority = 100

    def __init__(self, at):
        self.at = at

    def on_epoch_end(self, trainer, *, epoch, **kwargs):
        if epoch == self.at:
            raise KeyboardInterrupt


@pytest.mark.parametrize("cut_after", [0, 9, 10])
def test_exact_resume_after_an_interruption_keeps_the_callback_histories(digits, tmp_path, cut_after):
    """12 epochs; the loss prediction starts at epoch 10 and needs the restored val-loss history."""
    whole, train, val, whole_seen = build(digits)
    whole.train(train, val, epochs=12)
    assert all(row[5] is not None for row in whole_seen.rows[10:])

    first, train, val, _ = build(digits, tmp_path / "ck")
    first.callbacks = type(first.callbacks)([*first.callbacks, Interrupt(cut_after)])
    with pytest.raises(KeyboardInterrupt):
        first.train(train, val, epochs=12)

    resumed, train, val, resumed_seen = build(digits, seed=1)
    start = restore_state(resumed, load_state(tmp_path / "ck" / f"epoch_{cut_after}", expected_hash="abc"))
    resumed.train(train, val, epochs=12, start_epoch=start)
    assert resumed_seen.rows == whole_seen.rows[cut_after + 1:]
    for cls in (EarlyStoppingCallback, LossPredictionCallback, OverfitDetectionCallback):
        assert callback(resumed, cls).state_dict() == callback(whole, cls).state_dict()


# --- what a state holds -----------------------------------------------------------------------

def test_a_state_round_trips_into_fresh_objects(digits, tmp_path):
    random.seed(5), np.random.seed(5)
    trainer, train, val, _ = build(digits, tmp_path / "ck")
    trainer.train(train, val, epochs=10)  # epoch_9 is saved at on_epoch_end, before the LR step
    # nothing draws random numbers after the last checkpoint: what comes next is what a resume must see
    expected_draws = (random.random(), np.random.rand(), torch.rand(3))

    loaded = load_state(tmp_path / "ck" / "epoch_9", expected_hash="abc")
    assert loaded["epoch"] == 9 and loaded["format_version"] == checkpointing.FORMAT_VERSION
    assert loaded["config_hash"] == "abc"
    assert set(loaded["callbacks"]) == {"EarlyStoppingCallback", "LossPredictionCallback",
                                        "OverfitDetectionCallback", "CheckpointCallback"}
    assert all(isinstance(v, torch.Tensor) for k, v in loaded["rng"].items() if k in ("python", "numpy", "torch"))

    fresh, _, _, _ = build(digits, tmp_path / "other", seed=42)
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    assert restore_state(fresh, loaded) == 10
    assert_state_dicts_equal(fresh.model.state_dict(), trainer.model.state_dict())
    assert_state_dicts_equal(fresh.optimizer.state_dict(), trainer.optimizer.state_dict() | {
        "param_groups": fresh.optimizer.state_dict()["param_groups"]})  # LR compared below
    for cls in (EarlyStoppingCallback, LossPredictionCallback, OverfitDetectionCallback, CheckpointCallback):
        assert callback(fresh, cls).state_dict() == callback(trainer, cls).state_dict()
    assert len(callback(fresh, LossPredictionCallback).losses) == 10
    assert callback(fresh, EarlyStoppingCallback).best is not None
    # the scheduler was saved before its step for epoch 9, restored and stepped once: as after train()
    assert fresh.scheduler.state_dict() == trainer.scheduler.state_dict()
    assert fresh.lr == trainer.lr == pytest.approx(0.02 * 0.7 ** 10)
    # python, numpy and torch generators continue where they were when the state was collected
    draws = (random.random(), np.random.rand(), torch.rand(3))
    assert draws[:2] == expected_draws[:2] and torch.equal(draws[2], expected_draws[2])


def test_a_trainer_without_scheduler_round_trips(tmp_path):
    model = torch.nn.Linear(3, 2)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.3), None, torch.nn.MSELoss(), [])
    save_state(collect_state(trainer, 4), tmp_path / "c")
    fresh = Trainer(torch.nn.Linear(3, 2), torch.optim.SGD(model.parameters(), lr=0.1), None,
                    torch.nn.MSELoss(), [])
    assert restore_state(fresh, load_state(tmp_path / "c")) == 5
    assert_state_dicts_equal(fresh.model.state_dict(), model.state_dict())
    assert fresh.lr == 0.3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_state_loaded_onto_the_gpu_restores(digits, tmp_path):
    trainer, train, val, _ = build(digits)
    trainer.train(train, val, epochs=1)
    save_state(collect_state(trainer, 0), tmp_path / "c")
    torch.cuda.manual_seed_all(3)
    expected = torch.rand(2, device="cuda")
    fresh, _, _, _ = build(digits)
    fresh.model.cuda()
    state = load_state(tmp_path / "c", map_location="cuda")
    torch.cuda.manual_seed_all(3)
    assert restore_state(fresh, state) == 1
    assert "cuda" in state["rng"] and torch.equal(torch.rand(2, device="cuda"), expected)


# --- safe loading ---------------------------------------------------------------------------

def test_loading_never_runs_pickled_code(tmp_path):
    import pickle

    marker = tmp_path / "code-ran"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    (tmp_path / "evil").mkdir()
    torch.save({"format_version": 1, "x": Evil()}, tmp_path / "evil" / "state.pt", pickle_module=pickle)
    with pytest.raises(CheckpointError, match=r"evil/state.pt: cannot read checkpoint"):
        load_state(tmp_path / "evil")
    assert not marker.exists()  # weights_only=True refused the global before calling it


def test_bad_checkpoints_raise_checkpoint_error_naming_the_file(tmp_path):
    model = torch.nn.Linear(3, 2)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), None, torch.nn.MSELoss(), [])
    good = save_state(collect_state(trainer, 0, "h1"), tmp_path / "ok")
    data = good.read_bytes()

    with pytest.raises(CheckpointError) as info:
        load_state(tmp_path / "ok", expected_hash="other")
    assert str(good) in str(info.value) and "'h1'" in str(info.value) and "'other'" in str(info.value)

    for cut in (len(data) // 2, len(data) - 30, 10):
        (tmp_path / "cut").mkdir(exist_ok=True)
        (tmp_path / "cut" / "state.pt").write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
            load_state(tmp_path / "cut")
        assert str(tmp_path / "cut" / "state.pt") in str(info.value)

    old = collect_state(trainer, 0)
    old["format_version"] = checkpointing.FORMAT_VERSION + 1
    save_state(old, tmp_path / "other-version")
    with pytest.raises(CheckpointError) as info:
        load_state(tmp_path / "other-version")
    assert str(tmp_path / "other-version" / "state.pt") in str(info.value)
    assert f"format_version {checkpointing.FORMAT_VERSION} expected, but got {checkpointing.FORMAT_VERSION + 1}" \
        in str(info.value)

    torch.save([1, 2, 3], tmp_path / "ok" / "state.pt")  # readable, but not a checkpoint
    with pytest.raises(CheckpointError, match="format_version"):
        load_state(tmp_path / "ok")
    with pytest.raises(CheckpointError, match=r"missing/state.pt: checkpoint file does not exist"):
        load_state(tmp_path / "missing")


# --- atomic files ---------------------------------------------------------------------------

def entries(directory):
    return sorted(p.name for p in directory.iterdir())


def with_file_size_limit(limit, action):
    """Run `action` while this process may not write files beyond `limit` bytes (real EFBIG errors:
    Python ignores SIGXFSZ, so the write fails part-way with OSError)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        action()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_a_write_failing_part_way_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(OSError) as info:
        with_file_size_limit(4096, lambda: atomic_write_bytes(target, b"n" * 100_000))
    assert info.value.errno == 27  # EFBIG: the temporary file was cut off at 4096 bytes
    assert target.read_bytes() == b"old"
    assert entries(tmp_path) == ["f.bin"]


def test_a_checkpoint_write_failing_part_way_keeps_the_previous_state(tmp_path):
    model = torch.nn.Linear(200, 100)  # ~80 kB of weights
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), None, torch.nn.MSELoss(), [])
    save_state(collect_state(trainer, 1), tmp_path / "best")
    before = (tmp_path / "best" / "state.pt").read_bytes()
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(OSError):  # overwriting an existing checkpoint
        with_file_size_limit(16_384, lambda: save_state(collect_state(trainer, 2), tmp_path / "best"))
    with pytest.raises(OSError):  # a new checkpoint directory
        with_file_size_limit(16_384, lambda: save_state(collect_state(trainer, 2), tmp_path / "epoch_2"))
    assert entries(tmp_path) == ["best"]  # no half-made epoch_2/, no hidden temporary folder
    assert entries(tmp_path / "best") == ["state.pt"]
    assert (tmp_path / "best" / "state.pt").read_bytes() == before
    assert load_state(tmp_path / "best")["epoch"] == 1


def test_a_state_that_cannot_be_serialized_touches_nothing(tmp_path):
    model = torch.nn.Linear(3, 2)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), None, torch.nn.MSELoss(), [])
    save_state(collect_state(trainer, 1), tmp_path / "best")
    before = (tmp_path / "best" / "state.pt").read_bytes()
    broken = collect_state(trainer, 2) | {"extra": lambda: None}
    for name in ("best", "epoch_2"):
        with pytest.raises(Exception, match="pickle"):
            save_state(broken, tmp_path / name)
    assert entries(tmp_path) == ["best"] and entries(tmp_path / "best") == ["state.pt"]
    assert (tmp_path / "best" / "state.pt").read_bytes() == before


def test_periodic_checkpoints_are_ordered_by_epoch_number_and_need_their_file(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last_k=3)
    model = torch.nn.Linear(2, 2)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), None, torch.nn.MSELoss(), [])
    for epoch in (8, 9, 10, 100):
        manager.save_periodic(collect_state(trainer, epoch), epoch)
    (tmp_path / "epoch_200").mkdir()  # a folder without state.pt (not written by us): not a checkpoint
    (tmp_path / ".epoch_300.x.tmp").mkdir()
    assert [epoch for epoch, _ in manager.periodic()] == [9, 10, 100]
    assert manager.latest() == tmp_path / "epoch_100"
    assert entries(tmp_path) == [".epoch_300.x.tmp", "epoch_10", "epoch_100", "epoch_200", "epoch_9"]


def test_a_checkpoint_holds_its_epochs_record_and_whether_the_run_ended_there(digits, tmp_path):
    """`ended` tells a run restored from the checkpoint of its own end (its last epoch, or the epoch
    after which it stopped itself) from one that goes on; the record is what that epoch reported."""
    trainer, train, val, seen = build(digits, tmp_path / "ck")
    trainer.train(train, val, epochs=4)
    for epoch in range(4):
        state = load_state(tmp_path / "ck" / f"epoch_{epoch}", expected_hash="abc")
        assert state["record"]["epoch"] == epoch
        assert state["record"]["val_loss"] == seen.rows[epoch][2] == state["val_loss"]
        assert state["record"]["val_accuracy"] == seen.rows[epoch][3]
        assert checkpointing.ended(state, 4) == ("complete" if epoch == 3 else "")
        assert checkpointing.ended(state, 10) == ""  # the same checkpoint, in a longer run: goes on

    stopping, train, val, _ = build(digits, tmp_path / "es")
    stopping.callbacks = type(stopping.callbacks)(
        [EarlyStoppingCallback(patience=1, min_delta=10.0),  # no epoch improves enough: stops after epoch 1
         *(c for c in stopping.callbacks if not isinstance(c, EarlyStoppingCallback))])
    stopping.train(train, val, epochs=10)
    assert stopping.stop_reason == "early_stopping"
    last = load_state(tmp_path / "es" / "epoch_1", expected_hash="abc")
    assert checkpointing.ended(last, 10) == "early_stopping" and last["record"]["epoch"] == 1
    assert checkpointing.ended(load_state(tmp_path / "es" / "epoch_0", expected_hash="abc"), 10) == ""


# --- writing in the background ------------------------------------------------------------------

def test_a_host_copy_is_exact_independent_of_later_steps_and_reuses_its_buffers():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 4))
    model[2].weight = torch.nn.Parameter(torch.randn(8, 4).T)  # a non-contiguous parameter
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "history": [1.0, 2.0],
             "tied": (model[0].bias, model[0].bias), "n": 3}
    expected = {"model": {k: v.clone() for k, v in state["model"].items()},
                "optimizer": optimizer.state_dict()["state"][0]["exp_avg"].clone()}
    host_copy = checkpointing.HostCopy()
    copied, ready = host_copy(state)
    ready()
    with torch.no_grad():  # the next epoch trains on: nothing reaches the copy
        for parameter in model.parameters():
            parameter.add_(1.0)
    state["history"].append(3.0)
    model(torch.randn(5, 4))  # BatchNorm's running statistics move
    assert_state_dicts_equal(copied["model"], expected["model"])
    assert copied["model"]._metadata == state["model"]._metadata  # module versions, for load_state_dict
    assert torch.equal(copied["optimizer"]["state"][0]["exp_avg"], expected["optimizer"])
    assert copied["optimizer"]["param_groups"] == optimizer.state_dict()["param_groups"]
    assert copied["history"] == [1.0, 2.0] and copied["n"] == 3
    assert copied["tied"][0] is copied["tied"][1]  # one tensor under two names stays one
    again, _ = host_copy(state)  # the next checkpoint: the same buffers, the new values
    assert again["model"]["0.weight"].data_ptr() == copied["model"]["0.weight"].data_ptr()
    assert_state_dicts_equal(again["model"], model.state_dict())


def test_a_background_writer_raises_a_failed_writes_error_in_the_calling_thread():
    writer = checkpointing.BackgroundWriter()
    done = []
    writer.start(lambda: done.append(1), "the first")
    writer.start(lambda: 1 / 0, "the second")  # waits for the first, whose write worked
    assert done == [1]
    with pytest.raises(ZeroDivisionError) as info:
        writer.wait()
    assert info.value.__notes__ == ["raised by the background write of the second"]
    writer.wait()  # raised once


def test_a_write_into_a_reported_directory_cut_off_part_way_leaves_no_state_and_the_previous_one_loads(tmp_path):
    """The directory Tune names stays without state.pt: the loader falls back to the checkpoint before."""
    from ray.tune import Checkpoint

    from tuneloop.tune.trial_checkpoint import load_tune_checkpoint

    model = torch.nn.Linear(200, 100)  # ~80 kB of weights
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), None, torch.nn.MSELoss(), [])
    checkpointing.write_state_into(collect_state(trainer, 2), tmp_path / "checkpoint_000002")
    (tmp_path / "checkpoint_000003").mkdir()  # Tune's copy of the (empty) reported directory
    with pytest.raises(OSError):
        with_file_size_limit(16_384, lambda: checkpointing.write_state_into(
            collect_state(trainer, 3), tmp_path / "checkpoint_000003"))
    assert entries(tmp_path / "checkpoint_000003") == []  # no state.pt, no temporary
    with pytest.warns(RuntimeWarning, match="previous intact checkpoint"):
        state, path = load_tune_checkpoint(Checkpoint(str(tmp_path / "checkpoint_000003")))
    assert state["epoch"] == 2 and path.endswith("checkpoint_000002")
