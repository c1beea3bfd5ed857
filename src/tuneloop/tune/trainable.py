"""What Tune is handed: the function trainable `train_trial` and its class (`trainable_class`).

The driver imports this module to build or restore the Tuner, and never trains: it stays free of
torch (a resumed sweep's driver does not import it at all), and the trial's body, which needs
torch, is `tuneloop.tune.trial.run_trial`, imported where the trial runs.
"""

from __future__ import annotations

from tuneloop.tune import _compat

THREAD_TIMEOUT_S = 30  # how long a stopped trial's thread may take to end (W&B finish, clean-up)


def trainable_class(function):
    """Tune's class for the function trainable `function`, whose `stop` waits for the trial's thread.

    Ray's function trainable does not wait (timeout 0) when its actor is stopped rather than
    reused (always at the end of a sweep): the actor exits while the thread that got the
    scheduler's STOP is still in `on_train_end`, and the trial's W&B run is cut off unfinished
    (empty offline files). Here the thread gets `THREAD_TIMEOUT_S` to end first.
    """
    return _compat.function_trainable_waiting_for_its_thread(function, THREAD_TIMEOUT_S)


def train_trial(config: dict, *, run: dict, experiment: str, tags: tuple[str, ...] = (),
                adopt: bool = True) -> None:
    """One trial, in its Ray worker: `tuneloop.tune.trial.run_trial` with these arguments."""
    from tuneloop.tune.trial import run_trial

    run_trial(config, run=run, experiment=experiment, tags=tags, adopt=adopt)
