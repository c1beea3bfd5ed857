"""The sweep driver: `run_sweep` (`tuneloop sweep`), `resume_sweep` (`tuneloop resume`), `train_seeds`
(`tuneloop train --seeds`), with the checks, paths, locking, results and live table they use."""

# Tune pickled `trial_dirname` by this module path into sweeps of tuneloop 0.1 (`tuner.pkl`).
from tuneloop.sweep.paths import trial_dirname  # noqa: F401  (re-exported)
