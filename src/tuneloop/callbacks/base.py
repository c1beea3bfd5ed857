"""`TrainingCallback`, the base of every callback, and `CallbackRunner`, which fires events.

The Trainer fires eight events (the seed's seven and `on_before_optimizer_step`); a callback
overrides the hooks it cares about. Callbacks talk
to each other only through attributes on the trainer (see `Trainer.__init__`), and priority
(lower runs earlier) guarantees the producer runs before the consumer.
"""

from __future__ import annotations

import bisect
from typing import Any, Iterable

EVENTS = (
    "on_train_begin",
    "on_train_epoch_begin",
    "on_before_optimizer_step",
    "on_train_step_end",
    "on_val_begin",
    "on_val_end",
    "on_epoch_end",
    "on_train_end",
)

NON_FINITE_STOP = "non_finite_loss"  # the stop reason that makes `Trainer.train()` return inf


class TrainingCallback:
    """Base class: every hook is a no-op; override the ones you need.

    `priority` orders callbacks within an event (lower runs first); the default, 100, runs a
    callback after every built-in (5-95), so it reads the shared attributes of the same epoch.
    A callback may run one hook at another priority by naming it in `hook_priority`, e.g.
    `{"on_epoch_end": 100}`.
    A callback that wants to end training sets a truthy `stop_reason()` (checked after
    `on_epoch_end`, in priority order).
    """

    priority: int = 100
    hook_priority: dict[str, int] = {}

    def on_train_begin(self, trainer, *, epochs: int, start_epoch: int, **kwargs) -> None:
        """Before the first epoch; `epochs` is the total, `start_epoch` the first to run."""

    def on_train_epoch_begin(self, trainer, *, epoch: int, **kwargs) -> None:
        """Before the first training batch of `epoch` (0-based, absolute)."""

    def on_before_optimizer_step(self, trainer, *, optimizer, **kwargs) -> None:
        """After backward (gradients unscaled under fp16), before each optimizer step: clip or inspect."""

    def on_train_step_end(self, trainer, *, batch_idx: int, loss, **kwargs) -> None:
        """After each batch (and its optimizer step, if it ends one); `loss` is detached, 0-dim, unsynced."""

    def on_val_begin(self, trainer, *, epoch: int, **kwargs) -> None:
        """Before the validation pass of `epoch`."""

    def on_val_end(self, trainer, *, epoch: int, val_loss: float, metrics: dict, **kwargs) -> None:
        """After validation, with the epoch's val_loss and validation metrics."""

    def on_epoch_end(
        self, trainer, *, epoch: int, train_loss: float, val_loss: float, metrics: dict, **kwargs
    ) -> None:
        """After the epoch is fully evaluated; the last hook before the stop checks."""

    def on_train_end(self, trainer, **kwargs) -> None:
        """Always, once: after normal end, early stop, NaN stop, prune, or an exception."""

    def stop_reason(self) -> str | None:
        """A non-empty reason ends training after this epoch's `on_epoch_end`; None goes on."""
        return None


def _overrides(callback: TrainingCallback, event: str) -> bool:
    """Whether `callback` has its own `event` hook: its class (or a parent below TrainingCallback)
    overrides it, or the instance was given one (`callback.on_epoch_end = ...`) before it was added."""
    if event in getattr(callback, "__dict__", ()):
        return True
    return getattr(type(callback), event) is not getattr(TrainingCallback, event)


class CallbackRunner:
    """Holds callbacks sorted by priority (stable: ties keep insertion order) and fires events.

    `callbacks` is a tuple: a callback joins through `add`, which keeps the priority order and
    the per-event tables in step (a list appended to behind the runner's back would have its
    stop signal honoured but its hooks never called). Which hooks a callback has is looked up
    when it is added, so an event that no callback handles costs one dictionary lookup.
    """

    def __init__(self, callbacks: Iterable[TrainingCallback] = ()):
        self.callbacks: tuple[TrainingCallback, ...] = ()
        self._keys: list[int] = []  # the priority of each of `callbacks`, as it was when added
        # Per event, only the callbacks that override that hook, in the event's order (by
        # `hook_priority` where a callback sets one; ties keep insertion order there too).
        self._by_event: dict[str, list[TrainingCallback]] = {event: [] for event in EVENTS}
        self._event_keys: dict[str, list[int]] = {event: [] for event in EVENTS}
        for callback in callbacks:
            self.add(callback)

    def add(self, callback: TrainingCallback) -> None:
        """Add `callback` after every callback of the same or a lower priority (hook by hook)."""
        at = bisect.bisect_right(self._keys, callback.priority)
        self._keys.insert(at, callback.priority)
        self.callbacks = (*self.callbacks[:at], callback, *self.callbacks[at:])
        for event in EVENTS:
            if _overrides(callback, event):
                key = callback.hook_priority.get(event, callback.priority)
                at = bisect.bisect_right(self._event_keys[event], key)
                self._event_keys[event].insert(at, key)
                self._by_event[event].insert(at, callback)

    def fire(self, event_name: str, **kwargs: Any) -> None:
        """Call `event_name` on every callback that implements it, in priority order."""
        try:
            callbacks = self._by_event[event_name]
        except KeyError:
            raise ValueError(
                f"unknown event {event_name!r}; valid events: {', '.join(EVENTS)}"
            ) from None
        for callback in callbacks:
            try:
                getattr(callback, event_name)(**kwargs)
            except Exception as exc:
                exc.add_note(f"raised by {type(callback).__name__}.{event_name}")
                raise

    def stop_reason(self) -> str | None:
        """The first stop reason a callback gives, in priority order, else None.

        A non-finite-loss stop wins over every other reason, whatever the priorities (a NaN run
        has no result worth keeping, even when early stopping also fired), so `Trainer.train()`
        then returns inf.
        """
        reasons = [reason for reason in (callback.stop_reason() for callback in self.callbacks) if reason]
        if NON_FINITE_STOP in reasons:
            return NON_FINITE_STOP
        return reasons[0] if reasons else None

    def __iter__(self):
        return iter(self.callbacks)

    def __len__(self) -> int:
        return len(self.callbacks)
