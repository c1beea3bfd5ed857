"""The sweep driver: `run_sweep` (`tuneloop sweep`), `resume_sweep` (`tuneloop resume`), `train_seeds`
(`tuneloop train --seeds`), with the checks, paths, locking, results and live table they use.

`tuneloop.sweep` is also the Python API's `sweep()` (`tuneloop.sweep.api.sweep`): this package is
callable, so `tuneloop.sweep("experiment.yaml")` runs a sweep while `tuneloop.sweep.run` stays the
module of the command. (A function of that name beside the package would be replaced by the
package the first time one of its modules is imported.)
"""

import sys
import types

# Tune pickled `trial_dirname` by this module path into sweeps of tuneloop 0.1 (`tuner.pkl`).
from tuneloop.sweep.paths import trial_dirname  # noqa: F401  (re-exported)


class _CallablePackage(types.ModuleType):
    def __call__(self, experiment, overrides=(), **options):
        """Run the experiment's sweep and return a `SweepResult` (see `tuneloop.sweep.api.sweep`)."""
        from tuneloop.sweep.api import sweep

        return sweep(experiment, overrides, **options)


sys.modules[__name__].__class__ = _CallablePackage
