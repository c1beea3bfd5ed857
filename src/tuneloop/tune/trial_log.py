"""The trials' own output on the driver: each line prefixed by its trial id, nothing else of Ray's.

Ray forwards every worker's stdout and stderr to the driver as `(train_trial pid=3451) ...`,
deduplicated across workers (`[repeated 4x across cluster]`), with Ray's own worker messages in
between. A sweep shows instead only tuneloop's lines and, for each trial, what the trial itself
printed or warned (its callbacks' warnings, Python warnings, the user's own output), as
`[tuneloop] trial_<id>: <line>`. A trial announces itself with its first line (`START`) on its
stdout and on its stderr, so a line is attributed to the trial its process runs now (actors are
reused from trial to trial), by the announcement on its own stream: Ray reads a worker's two
streams from two files, and a batch of one can reach the driver before an older batch of the other
(a reused actor's warnings of trial A arriving after its stdout of trial B).
"""

from __future__ import annotations

import re
import threading
from collections import deque

from tuneloop.tune import _compat

# Ray's SIGTERM handler raises SystemExit in a worker that Ray ends; when it lands inside a weakref
# callback Python prints "Exception ignored in: ..." and that traceback: Ray ending a process, not
# the trial's output (ray/_private/worker.py, sigterm_handler).
_IGNORED = "Exception ignored in"
_RAY_TERMINATION = "sigterm_handler"

START = "[tuneloop] trial {trial_id} on "  # a trial's first line, on both streams (tuneloop.tune.trial.run_trial)
_START = re.compile(r"^\[tuneloop\] trial (\S+) on ")


class TrialLog:
    """Collects the trials' lines from Ray's stream of worker output (in Ray's log thread);
    `drain()` hands them over (in the driver's thread, which prints them)."""

    def __init__(self):
        self._lines: deque[str] = deque()
        self._trial_of: dict[tuple, str] = {}  # (node ip, pid, is_err) → the trial that stream is of now
        self._ignored: dict[tuple, list[str]] = {}  # (node ip, pid, is_err) → an "Exception ignored" block so far
        self._lock = threading.Lock()

    def on_batch(self, data: dict) -> None:
        """One batch of one stream of a worker's lines (Ray's dict: `ip`, `pid`, `is_err`, `lines`, ...)."""
        key = (data.get("ip"), data.get("pid"), bool(data.get("is_err")))
        for line in data.get("lines") or ():
            started = _START.match(line)
            if started:
                self._trial_of[key] = started.group(1)
                continue  # which trial runs where: in the trial's result rows (node_id, pid, device)
            trial_id = self._trial_of.get(key)
            if trial_id is None:  # not a trial's process: Ray's own workers and daemons
                continue
            for kept in self._unless_ray_termination(key, line):
                with self._lock:
                    self._lines.append(f"[tuneloop] trial_{trial_id}: {kept.removeprefix('[tuneloop] ')}")

    def _unless_ray_termination(self, key: tuple, line: str) -> list[str]:
        """The lines to show now: an "Exception ignored in" block is held until its last line (the
        exception's, unindented), then dropped if it is Ray's SIGTERM handler ending the process."""
        block = self._ignored.get(key)
        if block is None:
            if not line.startswith(_IGNORED):
                return [line]
            self._ignored[key] = [line]
            return []
        block.append(line)
        if not line or line[0].isspace() or line.startswith("Traceback"):
            return []  # inside the traceback
        del self._ignored[key]
        ray_ended_it = line.startswith("SystemExit") and any(_RAY_TERMINATION in held for held in block)
        return [] if ray_ended_it else block

    def drain(self) -> list[str]:
        """The lines collected since the last call, in the order they came."""
        with self._lock:
            lines = list(self._lines)
            self._lines.clear()
        return lines


def attach(trial_log: TrialLog) -> None:
    """Send the connected driver's worker output to `trial_log` instead of Ray's printer.
    Call after `ray.init(log_to_driver=True)`."""
    _compat.route_worker_output(trial_log.on_batch)
