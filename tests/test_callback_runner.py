"""CallbackRunner: priority order, unknown events, exceptions, skipped hooks, per-hook priority."""

from __future__ import annotations

import pytest

from tuneloop.callbacks import EVENTS, CallbackRunner, TrainingCallback


class Recorder(TrainingCallback):
    def __init__(self, name, priority, log):
        self.name, self.priority, self.log = name, priority, log

    def on_val_end(self, trainer, **kwargs):
        self.log.append(self.name)

    def on_epoch_end(self, trainer, **kwargs):
        self.log.append(f"{self.name}:epoch")


def test_sorted_by_priority_and_stable_for_ties():
    log = []
    runner = CallbackRunner([Recorder("c", 80, log), Recorder("a1", 10, log), Recorder("b", 50, log),
                             Recorder("a2", 10, log), Recorder("a3", 10, log)])
    runner.fire("on_val_end", trainer=None, epoch=0, val_loss=1.0, metrics={})
    assert log == ["a1", "a2", "a3", "b", "c"]
    assert [c.name for c in runner] == ["a1", "a2", "a3", "b", "c"]


def test_unknown_event_names_the_valid_ones():
    with pytest.raises(ValueError) as info:
        CallbackRunner([]).fire("on_validation_end", trainer=None)
    message = str(info.value)
    assert "'on_validation_end'" in message
    assert all(event in message for event in EVENTS)


class Boom(TrainingCallback):
    priority = 20

    def __init__(self, exc):
        self.exc = exc

    def on_epoch_end(self, trainer, **kwargs):
        raise self.exc


def test_exception_keeps_its_type_and_names_the_callback():
    log = []
    runner = CallbackRunner([Boom(KeyError("missing")), Recorder("later", 30, log)])
    with pytest.raises(KeyError) as info:
        runner.fire("on_epoch_end", trainer=None, epoch=0, train_loss=1.0, val_loss=1.0, metrics={})
    assert any("Boom" in note for note in info.value.__notes__)
    assert log == []  # later callbacks do not run after a failure


@pytest.mark.parametrize("exc", [SystemExit(0), KeyboardInterrupt()])
def test_system_exit_and_keyboard_interrupt_pass_through_unchanged(exc):
    with pytest.raises(type(exc)) as info:
        CallbackRunner([Boom(exc)]).fire("on_epoch_end", trainer=None)
    assert info.value is exc and not getattr(info.value, "__notes__", None)


def test_hooks_not_overridden_are_skipped():
    class OnlyVal(TrainingCallback):
        def on_val_end(self, trainer, **kwargs):
            pass

    runner = CallbackRunner([OnlyVal(), TrainingCallback()])
    assert runner._by_event["on_train_step_end"] == []
    assert [type(c) for c in runner._by_event["on_val_end"]] == [OnlyVal]


def test_hook_priority_moves_one_hook():
    log = []

    class Late(Recorder):
        hook_priority = {"on_epoch_end": 100}

    runner = CallbackRunner([Late("late", 5, log), Recorder("mid", 50, log)])
    runner.fire("on_val_end", trainer=None)
    runner.fire("on_epoch_end", trainer=None)
    assert log == ["late", "mid", "mid:epoch", "late:epoch"]


def test_stop_reason_is_the_first_in_priority_order():
    class Stop(TrainingCallback):
        def __init__(self, priority, reason):
            self.priority, self.reason = priority, reason

        def stop_reason(self):
            return self.reason

    runner = CallbackRunner([Stop(90, "early"), Stop(5, None), Stop(50, "mine")])
    assert runner.stop_reason() == "mine"
    assert CallbackRunner([Stop(1, None)]).stop_reason() is None
