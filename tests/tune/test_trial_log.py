"""The trials' output on the driver: attributed to its trial, Ray's own noise left out."""

import logging
import sys

from tuneloop.tune.session import _interrupt_notice, _no_metrics_notice, _transient_sync_race, filter_ray_notices
from tuneloop.tune.trial_log import START, TrialLog
from tuneloop.tune import _compat

# What Ray forwarded from a trial process that Ray ended at shutdown (a real sweep's output).
RAY_ENDED_THE_PROCESS = [
    "Exception ignored in: <function WeakSet.__init__.<locals>._remove at 0x7f9f8206f9c0>",
    "Traceback (most recent call last):",
    '  File "/usr/lib/python3.11/_weakrefset.py", line 39, in _remove',
    "    def _remove(item, selfref=ref(self)):",
    "",
    '  File "/site-packages/ray/_private/worker.py", line 1063, in sigterm_handler',
    "    raise_sys_exit_with_custom_error_message(",
    '  File "python/ray/_raylet.pyx", line 712, in ray._raylet.raise_sys_exit_with_custom_error_message',
    "SystemExit: 1",
]


def batch(pid, *lines, is_err=False):
    return {"ip": "10.0.0.1", "pid": pid, "is_err": is_err, "lines": list(lines)}


def test_lines_are_attributed_to_the_trial_the_process_runs_now():
    log = TrialLog()
    log.on_batch(batch(1, "a line of Ray's own worker"))
    log.on_batch(batch(1, START.format(trial_id="aaaa") + "cpu", "epoch 3: warning"))
    log.on_batch(batch(2, START.format(trial_id="bbbb") + "cpu", "[tuneloop] hello"))
    log.on_batch(batch(1, START.format(trial_id="cccc") + "cpu", "reused actor"))
    assert sorted(log.drain()) == sorted([
        "[tuneloop] trial_aaaa: epoch 3: warning",
        "[tuneloop] trial_bbbb: hello",
        "[tuneloop] trial_cccc: reused actor",
    ])
    assert log.drain() == []


def test_each_stream_is_attributed_by_its_own_start_line_whichever_stream_comes_first():
    """A reused actor ran trial aaaa, then bbbb; Ray delivers its stdout of both before its stderr
    of both (two files, read separately): aaaa's warning stays aaaa's."""
    log = TrialLog()
    log.on_batch(batch(1, START.format(trial_id="aaaa") + "cpu", "aaaa says", START.format(trial_id="bbbb") + "cpu",
                       "bbbb says"))
    log.on_batch(batch(1, START.format(trial_id="aaaa"), "UserWarning: of aaaa", START.format(trial_id="bbbb"),
                       "UserWarning: of bbbb", is_err=True))
    assert sorted(log.drain()) == sorted([
        "[tuneloop] trial_aaaa: aaaa says", "[tuneloop] trial_bbbb: bbbb says",
        "[tuneloop] trial_aaaa: UserWarning: of aaaa", "[tuneloop] trial_bbbb: UserWarning: of bbbb",
    ])


def test_rays_sigterm_at_a_processes_end_is_left_out_even_across_batches():
    log = TrialLog()
    log.on_batch(batch(7, START.format(trial_id="aaaa") + "cpu", "before"))
    log.on_batch(batch(7, *RAY_ENDED_THE_PROCESS[:4]))
    log.on_batch(batch(7, *RAY_ENDED_THE_PROCESS[4:], "after"))
    assert log.drain() == ["[tuneloop] trial_aaaa: before", "[tuneloop] trial_aaaa: after"]


def test_any_other_ignored_exception_is_shown_whole():
    block = RAY_ENDED_THE_PROCESS[:4] + ["ValueError: the user's own bug"]
    log = TrialLog()
    log.on_batch(batch(7, START.format(trial_id="aaaa") + "cpu", *block))
    assert log.drain() == [f"[tuneloop] trial_aaaa: {line}" for line in block]


def sync_warning(last_line: str) -> logging.LogRecord:
    message = "Last sync command failed with the following error:\nTraceback (most recent call last):\n" \
              f'  File "pyarrow/error.pxi", line 92, in pyarrow.lib.check_status\n{last_line}\n'
    return logging.LogRecord(_compat.SYNCER_LOGGER, logging.WARNING, "syncer.py", 345, message, None, None)


def test_a_sync_that_lost_the_race_with_an_atomic_rename_is_not_shown_and_others_are():
    raced = sync_warning("FileNotFoundError: [Errno 2] Failed to open local file '/tmp/ray/session/artifacts/"
                         "x/driver_artifacts/.ff8e7377-tmp-searcher-state-2026.pkl'. Detail: [errno 2]")
    missing = sync_warning("FileNotFoundError: [Errno 2] Failed to open local file '/data/results/trial/result.json'")
    denied = sync_warning("PermissionError: [Errno 13] Permission denied: '/data/x-tmp-y'")
    assert not _transient_sync_race(raced)
    assert _transient_sync_race(missing) and _transient_sync_race(denied)

    filter_ray_notices()
    filter_ray_notices()
    logger = logging.getLogger(_compat.SYNCER_LOGGER)
    assert logger.filters.count(_transient_sync_race) == 1
    assert not logger.filter(raced) and logger.filter(missing)


def state_save_error(exception: Exception) -> logging.LogRecord:
    """What Tune's experiment state logs when the sync it waits for before a forced save failed."""
    try:
        raise exception
    except Exception:
        return logging.LogRecord(_compat.EXPERIMENT_STATE_LOGGER, logging.ERROR, "experiment_state.py", 176,
                                 "Saving experiment state to storage at '/data/results/probe' failed with "
                                 "exception: ", None, sys.exc_info())


def test_the_same_race_is_not_shown_when_tune_waits_for_that_sync_before_saving_once_more():
    raced = state_save_error(FileNotFoundError(2, "Failed to open local file '/tmp/ray/session/artifacts/x/"
                                                  "driver_artifacts/.ff8e7377-tmp-searcher-state-2026.pkl'"))
    missing = state_save_error(FileNotFoundError(2, "Failed to open local file '/data/results/trial/result.json'"))
    other = state_save_error(TimeoutError("_upload_to_fs_path did not finish running within the timeout"))
    assert not _transient_sync_race(raced)
    assert _transient_sync_race(missing) and _transient_sync_race(other)
    filter_ray_notices()
    logger = logging.getLogger(_compat.EXPERIMENT_STATE_LOGGER)
    assert not logger.filter(raced) and logger.filter(other)


def record(logger: str, message: str) -> logging.LogRecord:
    return logging.LogRecord(logger, logging.WARNING, "tune.py", 1, message, None, None)


def test_tunes_ctrl_c_notices_are_said_in_tuneloops_words(capsys):
    stop = record(_compat.TUNE_LOGGER, "Stop signal received (e.g. via SIGINT/Ctrl+C), ending Ray Tune run. ...")
    hint = record(_compat.TUNE_LOGGER, "Experiment has been interrupted, but the most recent state was saved.\n"
                                       "Resume experiment with: Tuner.restore(path=...)")
    other = record(_compat.TUNE_LOGGER, "Trial xyz failed")
    assert not _interrupt_notice(stop) and not _interrupt_notice(hint) and _interrupt_notice(other)
    assert capsys.readouterr().out.startswith("[tuneloop] stopping: the running trials stop")
    assert not _no_metrics_notice(record(_compat.ANALYSIS_LOGGER, "Failed to fetch metrics for 2 trial(s):"))
    assert _no_metrics_notice(record(_compat.ANALYSIS_LOGGER, "something else"))
