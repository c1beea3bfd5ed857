"""CallbackRunner: priority order, unknown events, exceptions, skipped hooks, per-hook priority."""

from __future__ import annotations

import traceback

import pytest

from tuneloop.callbacks import EVENTS, CallbackRunner, NaNDetectionCallback, TrainingCallback

EPOCH_END = dict(trainer=None, epoch=0, train_loss=1.0, val_loss=1.0, metrics={})


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
                             Recorder("a2", 10, log), Recorder("a3", 10, log), Recorder("z", -1, log)])
    runner.fire("on_val_end", trainer=None, epoch=0, val_loss=1.0, metrics={})
    assert log == ["z", "a1", "a2", "a3", "b", "c"]
    assert [c.name for c in runner] == ["z", "a1", "a2", "a3", "b", "c"] and len(runner) == 6


def test_ties_keep_insertion_order_whatever_it_is():
    for names in (["p", "q", "r"], ["r", "q", "p"], ["q", "r", "p"]):
        log = []
        CallbackRunner([Recorder(n, 7, log) for n in names]).fire("on_val_end", trainer=None)
        assert log == names


def test_accepts_any_iterable_and_sorts_once():
    log = []
    callbacks = [Recorder("late", 9, log), Recorder("early", 1, log)]
    runner = CallbackRunner(c for c in callbacks)
    callbacks[0].priority = 0  # changing a priority later does not reorder a built runner
    runner.fire("on_val_end", trainer=None)
    assert log == ["early", "late"]
    CallbackRunner().fire("on_train_end", trainer=None)  # no callbacks: nothing happens


def test_fire_calls_every_callback_in_order_with_the_same_arguments():
    calls = []

    class Seen(TrainingCallback):
        def __init__(self, priority):
            self.priority = priority

        def on_epoch_end(self, trainer, **kwargs):
            calls.append((self.priority, trainer, kwargs))

    trainer, metrics = object(), {"val_accuracy": 0.5}
    CallbackRunner([Seen(3), Seen(1), Seen(2)]).fire(
        "on_epoch_end", trainer=trainer, epoch=4, train_loss=0.1, val_loss=0.2, metrics=metrics)
    assert [c[0] for c in calls] == [1, 2, 3]
    for _, got_trainer, kwargs in calls:
        assert got_trainer is trainer and kwargs["metrics"] is metrics
        assert kwargs == {"epoch": 4, "train_loss": 0.1, "val_loss": 0.2, "metrics": metrics}


@pytest.mark.parametrize("name", ["on_validation_end", "on_val_end ", "fire", "stop_reason", "__init__", ""])
def test_unknown_event_names_the_valid_ones(name):
    for runner in (CallbackRunner([]), CallbackRunner([Recorder("a", 1, [])])):
        with pytest.raises(ValueError) as info:
            runner.fire(name, trainer=None)
        message = str(info.value)
        assert repr(name) in message
        assert all(event in message for event in EVENTS)


class Boom(TrainingCallback):
    priority = 20

    def __init__(self, exc):
        self.exc = exc

    def on_epoch_end(self, trainer, **kwargs):
        raise self.exc


class Fine(TrainingCallback):
    priority = 10

    def on_epoch_end(self, trainer, **kwargs):
        pass


@pytest.mark.parametrize("exc", [KeyError("missing"), RuntimeError("bad"), ZeroDivisionError(), ValueError("v")])
def test_exception_keeps_its_type_and_names_the_callback(exc):
    log = []
    runner = CallbackRunner([Fine(), Boom(exc), Recorder("later", 30, log)])
    with pytest.raises(type(exc)) as info:
        runner.fire("on_epoch_end", **EPOCH_END)
    assert info.value is exc  # the very exception, not a wrapper
    notes = getattr(info.value, "__notes__", [])
    assert any("Boom" in note for note in notes) and not any("Fine" in note for note in notes)
    assert "Boom" in "".join(traceback.format_exception(info.value))  # shown in the traceback
    assert log == []  # later callbacks do not run after a failure


def test_exception_names_the_subclass_not_the_base():
    class MyFailingCallback(Boom):
        pass

    with pytest.raises(RuntimeError) as info:
        CallbackRunner([MyFailingCallback(RuntimeError("x"))]).fire("on_epoch_end", **EPOCH_END)
    assert any("MyFailingCallback" in note for note in info.value.__notes__)


@pytest.mark.parametrize("exc", [SystemExit(0), SystemExit(3), KeyboardInterrupt()])
def test_system_exit_and_keyboard_interrupt_pass_through_unchanged(exc):
    log = []
    with pytest.raises(type(exc)) as info:
        CallbackRunner([Boom(exc), Recorder("later", 30, log)]).fire("on_epoch_end", **EPOCH_END)
    assert info.value is exc and not getattr(info.value, "__notes__", None)
    if isinstance(exc, SystemExit):
        assert info.value.code == exc.code
    assert log == []


def test_hooks_not_overridden_are_skipped():
    called = []

    class OnlyVal(TrainingCallback):
        def on_val_end(self, trainer, **kwargs):
            called.append("val_end")

    class Inherits(OnlyVal):  # overrides through its parent: still called
        pass

    runner = CallbackRunner([OnlyVal(), TrainingCallback(), Inherits()])
    assert runner._by_event["on_train_step_end"] == []
    assert [type(c) for c in runner._by_event["on_val_end"]] == [OnlyVal, Inherits]
    runner.fire("on_val_end", trainer=None)
    assert called == ["val_end", "val_end"]


def test_skipping_is_not_observable_for_the_base_hooks(monkeypatch):
    """The base class's no-op hooks are never called (per-step firing stays cheap)."""
    calls = []
    monkeypatch.setattr(TrainingCallback, "on_train_step_end",
                        lambda self, trainer, **kwargs: calls.append(self))
    runner = CallbackRunner([TrainingCallback()])  # built after the patch: the patched hook is the base
    runner.fire("on_train_step_end", trainer=None, batch_idx=0, loss=None)
    assert calls == []


def test_hook_priority_moves_one_hook():
    log = []

    class Late(Recorder):
        hook_priority = {"on_epoch_end": 100}

    runner = CallbackRunner([Late("late", 5, log), Recorder("mid", 50, log)])
    runner.fire("on_val_end", trainer=None)
    runner.fire("on_epoch_end", trainer=None)
    assert log == ["late", "mid", "mid:epoch", "late:epoch"]


def test_hook_priority_ties_keep_insertion_order_and_can_move_earlier():
    log = []

    class Early(Recorder):
        hook_priority = {"on_epoch_end": 1}

    class Tied(Recorder):
        hook_priority = {"on_epoch_end": 50}

    runner = CallbackRunner([Recorder("a", 50, log), Tied("t", 90, log), Early("e", 99, log), Recorder("b", 50, log)])
    runner.fire("on_epoch_end", trainer=None)
    assert log == ["e:epoch", "a:epoch", "t:epoch", "b:epoch"]
    log.clear()
    runner.fire("on_val_end", trainer=None)  # other hooks keep the class priority
    assert log == ["a", "b", "t", "e"]


class Stop(TrainingCallback):
    def __init__(self, priority, reason):
        self.priority, self.reason = priority, reason

    def stop_reason(self):
        return self.reason


def test_stop_reason_is_the_first_in_priority_order():
    runner = CallbackRunner([Stop(90, "early"), Stop(5, None), Stop(50, "mine"), Stop(60, "")])
    assert runner.stop_reason() == "mine"
    assert CallbackRunner([Stop(1, None), Stop(2, "")]).stop_reason() is None
    assert CallbackRunner([]).stop_reason() is None


def test_a_non_finite_stop_wins_over_every_other_reason():
    nan = NaNDetectionCallback()
    nan.on_epoch_end(None, epoch=0, train_loss=float("nan"), val_loss=1.0, metrics={})
    runner = CallbackRunner([Stop(1, "user_stop"), nan, Stop(90, "early_stopping")])
    assert runner.stop_reason() == "non_finite_loss"


def test_a_callback_without_a_priority_runs_after_every_builtin():
    """Default priority 100: a user's callback reads the shared attributes of the same epoch."""
    from tuneloop import callbacks as cb

    class Mine(TrainingCallback):
        pass

    assert TrainingCallback.priority == 100 and Mine.priority == 100
    builtins = [cb.CheckpointCallback("unused"), cb.EarlyStoppingCallback(), cb.PrunerCallback(report=lambda *a: None),
                cb.WandbLoggingCallback(), cb.OverfitDetectionCallback(), cb.LossPredictionCallback(10),
                cb.GradientMonitorCallback(), cb.OptimizerModeCallback(), cb.NaNDetectionCallback()]
    mine = Mine()
    runner = CallbackRunner([mine, *builtins])
    assert runner.callbacks[-1] is mine
    assert all(c.priority < mine.priority for c in runner.callbacks[:-1])


def test_the_callbacks_cannot_be_changed_behind_the_runners_back():
    log = []
    runner = CallbackRunner([Recorder("a", 10, log)])
    assert isinstance(runner.callbacks, tuple)
    with pytest.raises(AttributeError):
        runner.callbacks.append(Recorder("b", 20, log))


def test_add_keeps_the_priority_order_and_the_hook_tables():
    log = []
    runner = CallbackRunner([Recorder("a", 10, log), Recorder("c", 30, log)])
    runner.add(Recorder("b", 20, log))
    runner.add(Recorder("c2", 30, log))  # a tie goes after the callbacks already there
    runner.add(Recorder("z", 0, log))
    assert [c.name for c in runner] == ["z", "a", "b", "c", "c2"] and len(runner) == 5
    runner.fire("on_val_end", trainer=None)
    assert log == ["z", "a", "b", "c", "c2"]

    class Late(Recorder):
        hook_priority = {"on_epoch_end": 100}

    runner.add(Late("late", 5, log))
    log.clear()
    runner.fire("on_epoch_end", trainer=None)
    assert log == ["z:epoch", "a:epoch", "b:epoch", "c:epoch", "c2:epoch", "late:epoch"]
    log.clear()
    runner.fire("on_val_end", trainer=None)
    assert log == ["z", "late", "a", "b", "c", "c2"]


def test_an_added_callback_is_called_and_its_stop_signal_honoured():
    import torch

    from tuneloop.trainer import Trainer

    class StopAtTwo(TrainingCallback):
        def __init__(self):
            self.epochs = []

        def on_epoch_end(self, trainer, *, epoch, **kwargs):
            self.epochs.append(epoch)

        def stop_reason(self):
            return "mine" if len(self.epochs) >= 2 else None

    model = torch.nn.Linear(3, 2)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), None, torch.nn.CrossEntropyLoss(), [])
    added = StopAtTwo()
    trainer.callbacks.add(added)
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    trainer.train([(x, y)], [(x, y)], epochs=5)
    assert added.epochs == [0, 1] and trainer.stop_reason == "mine"


def test_a_hook_given_to_an_instance_fires():
    """A hook set on the instance (not on its class) is found when the callback is added."""
    log = []
    given = TrainingCallback()
    given.on_epoch_end = lambda trainer, **kwargs: log.append(("given", kwargs["epoch"]))
    recorder = Recorder("r", 50, log)
    recorder.on_train_step_end = lambda trainer, **kwargs: log.append(("step", kwargs["batch_idx"]))
    runner = CallbackRunner([recorder])
    runner.add(given)
    runner.fire("on_epoch_end", **EPOCH_END)
    runner.fire("on_train_step_end", trainer=None, batch_idx=3, loss=None)
    assert log == ["r:epoch", ("given", 0), ("step", 3)]
    assert runner._by_event["on_train_begin"] == []  # hooks nobody has stay empty


def test_a_subclass_added_later_gets_every_hook_it_overrides():
    calls = []

    class Late(TrainingCallback):
        priority = 3

        def on_train_step_end(self, trainer, **kwargs):
            calls.append("step")

        def on_before_optimizer_step(self, trainer, **kwargs):
            calls.append("before")

    runner = CallbackRunner([Recorder("a", 10, [])])
    assert runner._by_event["on_train_step_end"] == []
    runner.add(Late())
    runner.fire("on_before_optimizer_step", trainer=None, optimizer=None)
    runner.fire("on_train_step_end", trainer=None, batch_idx=0, loss=None)
    assert calls == ["before", "step"]
