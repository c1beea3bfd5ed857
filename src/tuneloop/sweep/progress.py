"""The live progress of a sweep on the driver: a compact table instead of Ray's wall of columns.

    digits_mlp · asha · 0:42 · 11/24 done (8 complete, 3 pruned, 0 failed) · 2 running · 11 pending
    best val_loss 0.07124 (trial_5f2a1c03)
    trial            state     epoch   val_loss  predicted  optimizer_config.lr net_config.hidden
    trial_8d0e33a1   running   12/30     0.1031    0.08512  0.0412              128

On a terminal the block is redrawn in place about once a second; into a file or a CI log a
block is printed when something changed, at most every `LOG_EVERY_S`, and one line per trial
that ends. `quiet` (`tuneloop sweep --quiet`) prints nothing until the final summary. Everything
shown is read from Tune's trials (status and last result), so a resumed sweep shows the same.
"""

from __future__ import annotations

import math
import re
import sys
import time

from ray.tune import Callback

from tuneloop.config.search_space import short_value
from tuneloop.outcome import best, outcome

TTY_EVERY_S = 1.0  # redraw period on a terminal
LOG_EVERY_S = 30.0  # at most one block per this period into a log
ENDED = ("TERMINATED", "ERROR")


class SweepProgress(Callback):
    """Tune callback rendering the table. How it shows it is the driver's to say (`display`), on
    every run: a restored sweep (this object unpickled) follows the command line of the resume, not
    of the first run; none of it is pickled."""

    def __init__(self, name: str, scheduler: str, metric: str, mode: str, num_samples: int, epochs: int,
                 keys: list[str]):
        self.name, self.scheduler, self.metric, self.mode = name, scheduler, metric, mode
        self.num_samples, self.epochs, self.keys = num_samples, epochs, list(keys)
        self.display()

    def display(self, *, quiet: bool = False, stream=None, trial_log=None) -> None:
        """`quiet`: nothing until the final summary (`--quiet`); `stream`: where to write (None:
        sys.stdout at the time of writing); `trial_log`: a tuneloop.tune.trial_log.TrialLog whose
        lines (the trials' own output) are printed above the table."""
        self.quiet, self.stream, self.trial_log = quiet, stream, trial_log
        self._reset_display()

    def _reset_display(self) -> None:
        self._started = time.monotonic()
        self._last_draw = -math.inf
        self._last_block: list[str] = []
        self._drawn_lines = 0  # lines of the block now on the terminal (redrawn in place)
        self._announced: set[str] = set()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        for key in ("_started", "_last_draw", "_last_block", "_drawn_lines", "_announced", "quiet", "stream",
                    "trial_log"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.display()

    # --- Tune's hooks ---------------------------------------------------------------------

    def on_step_end(self, iteration, trials, **info):
        """The trials' new lines; a redraw when the period is over (after every step of Tune's loop)."""
        self._write_trial_lines()
        self._show(trials, force=False)

    def on_trial_complete(self, iteration, trials, trial, **info):
        """Announce the trial's end (complete or pruned) in a log."""
        self._write_trial_lines()
        self._announce(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        """Announce the trial's failure with where its error is."""
        self._write_trial_lines()
        self._announce(trial)

    def on_experiment_end(self, trials, **info):
        """The last state of the table, once."""
        self._write_trial_lines()
        self._show(trials, force=True)

    # --- rendering ------------------------------------------------------------------------

    def _out(self):
        return self.stream or sys.stdout

    def _tty(self) -> bool:
        out = self._out()
        return bool(getattr(out, "isatty", lambda: False)())

    def _show(self, trials, *, force: bool) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        every = TTY_EVERY_S if self._tty() else LOG_EVERY_S
        if not force and now - self._last_draw < every:
            return
        block = self.render(trials, elapsed=now - self._started)
        self._last_draw = now
        out = self._out()
        if self._tty():
            if self._drawn_lines:
                out.write(f"\x1b[{self._drawn_lines}F\x1b[J")  # back to the block's first line, clear below
            out.write("\n".join(block) + "\n")
            self._drawn_lines = len(block)
        elif _unclocked(block) != self._last_block or force:
            out.write("\n".join(block) + "\n")
        self._last_block = _unclocked(block)
        out.flush()

    def _write_trial_lines(self) -> None:
        """What the trials printed or warned, one `[tuneloop] trial_<id>: ...` line each, above the
        table (on a terminal the table is cleared first and drawn again below them)."""
        lines = self.trial_log.drain() if self.trial_log is not None else []
        if self.quiet or not lines:
            return
        out = self._out()
        if self._tty() and self._drawn_lines:
            out.write(f"\x1b[{self._drawn_lines}F\x1b[J")
            self._drawn_lines = 0
            self._last_draw = -math.inf  # drawn again at the next step
        out.write("\n".join(lines) + "\n")
        out.flush()

    def _announce(self, trial) -> None:
        if self.quiet or trial.trial_id in self._announced:
            return
        self._announced.add(trial.trial_id)
        if self._tty():  # the table shows it; an error's location is worth a line above the table
            if trial.status != "ERROR" and not trial.error_file:
                return
            self._drawn_lines = 0
        state = self._state(trial)
        result = trial.last_result or {}
        line = (f"[tuneloop] trial_{trial.trial_id} {state} after {result.get('training_iteration', 0)} "
                f"epoch(s), {self.metric}={_num(result.get(self.metric))}")
        if state == "failed" and trial.error_file:
            line += f"; error in {trial.error_file}"
        out = self._out()
        out.write(line + "\n")
        out.flush()

    def render(self, trials, *, elapsed: float) -> list[str]:
        """The block's lines: counts, the best trial so far, one row per running or paused trial."""
        ended = [t for t in trials if t.status in ENDED]
        states = [self._state(t) for t in ended]
        running = [t for t in trials if t.status in ("RUNNING", "PAUSED")]
        pending = max(0, self.num_samples - len(ended) - len(running))
        minutes, seconds = divmod(int(elapsed), 60)
        lines = [f"{self.name} · {self.scheduler} · {minutes}:{seconds:02d} · {len(ended)}/{self.num_samples} done "
                 f"({states.count('complete')} complete, {states.count('pruned')} pruned, "
                 f"{states.count('failed')} failed) · {len(running)} running · {pending} pending"]
        best = self._best(ended)
        if best is not None:
            lines.append(f"best {self.metric} {_num(best.last_result[self.metric])} (trial_{best.trial_id})")
        if running:
            keys = " ".join(f"{k:<{max(len(k), 10)}}" for k in self.keys)
            lines.append(f"{'trial':<16} {'state':<8} {'epoch':>7} {'val_loss':>10} {'predicted':>10}  {keys}")
            for t in sorted(running, key=lambda t: t.trial_id):
                result = t.last_result or {}
                epoch = f"{result.get('training_iteration', 0)}/{self.epochs}"
                config = " ".join(f"{short_value(t.config.get(k)):<{max(len(k), 10)}}" for k in self.keys)
                lines.append(f"trial_{t.trial_id:<10} {t.status.lower():<8} {epoch:>7} "
                             f"{_num(result.get('val_loss')):>10} {_num(result.get('predicted_final_loss')):>10}  "
                             f"{config}".rstrip())
        return lines

    def _best(self, ended):
        """The best ended trial, by the rule of every view of the sweep (`tuneloop.outcome.best`)."""
        return best(ended, mode=self.mode, state=self._state,
                    value=lambda t: (t.last_result or {}).get(self.metric))

    def _state(self, trial) -> str:
        """complete / pruned / failed of an ended trial, by the rule the Optuna study is told."""
        return outcome(trial.last_result, trial.status == "ERROR", metric=self.metric)[0]


def _unclocked(block: list[str]) -> list[str]:
    """The block without its clock (the first line's `m:ss`): what tells whether anything changed."""
    return [re.sub(r" · \d+:\d\d · ", " · ", block[0], count=1), *block[1:]]


def _num(value) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) and value is not None else "-"
