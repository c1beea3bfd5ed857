"""CompileCallback: `torch.compile` the model in place before training; print the compile time once."""

from __future__ import annotations

import time

from tuneloop.callbacks.base import TrainingCallback


class CompileCallback(TrainingCallback):
    """Compiles `trainer.model` with `Module.compile(mode=...)` (`run.compile`).

    In place: the module keeps its own class and state_dict keys, so checkpoints of a compiled
    and an uncompiled run load into each other. Compilation happens in the first training step;
    its time is printed once.

    Under DDP: compiles the DDP-wrapped model on every rank.
    """

    priority = 1  # before anything else touches the model

    def __init__(self, mode: str | None = None, backend: str | None = None):
        self.mode = mode
        self.options = {k: v for k, v in (("mode", mode), ("backend", backend)) if v}  # torch.compile's
        self._compiled: set[int] = set()  # id() of the modules compiled so far
        self._started: float | None = None  # when the first step after a compilation began (until printed)

    def on_train_begin(self, trainer, **kwargs):
        if id(trainer.model) not in self._compiled:
            trainer.model.compile(**self.options)
            self._compiled.add(id(trainer.model))
            self._started = time.perf_counter()

    def on_train_epoch_begin(self, trainer, **kwargs):
        if self._started is not None:
            self._started = time.perf_counter()  # the epoch's first step compiles: time from here

    def on_train_step_end(self, trainer, **kwargs):
        if self._started is not None:
            took = time.perf_counter() - self._started  # the host waits for compilation: no device sync needed
            print(f"[tuneloop] torch.compile{f' (mode {self.mode})' if self.mode else ''}: "
                  f"the first step, with compilation, took {took:.1f}s", flush=True)
            self._started = None
