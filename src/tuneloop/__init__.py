"""tuneloop: Ray Tune + Optuna hyperparameter sweeps for PyTorch, with a priority-ordered callback Trainer.

The layers, bottom to top (`docs/architecture.md`): leaf modules (`_io`, `storage`, `checkpoints`,
`outcome`, `curves`, `metrics`); `config/` (the experiment file); `trainer.py` and `callbacks/`
(the loop and its features: the user's API); `training/` (one run without Ray); `tune/` (Ray
Tune's parts); `sweep/` (the driver); `reporting/`; `cli.py`, and the Python API (`api.py`):
`tuneloop.sweep(...)`, `tuneloop.resume(...)`, `tuneloop.train(...)`, `tuneloop.load_experiment(...)`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types

__version__ = "0.1.0"

# The Python API (`tuneloop.api`), imported when first used: the command line does not need it.
API = ("SweepResult", "UserError", "load_experiment", "read_sweep", "resume", "train")


def __getattr__(name: str):
    if name in API:
        from tuneloop import api

        return getattr(api, name)
    if name == "sweep":  # the driver package, callable as the API's sweep() (tuneloop/sweep/__init__.py)
        return importlib.import_module("tuneloop.sweep")
    raise AttributeError(f"module 'tuneloop' has no attribute {name!r}")

# Modules of tuneloop 0.1's flat layout → where they are now. Ray Tune pickles the searcher, the
# schedulers and the callbacks of a sweep by module path (`tuner.pkl`, the searcher's state): a
# sweep started before the move still unpickles, and resumes, through these names.
MOVED = {
    "tuneloop.searcher": "tuneloop.tune.searcher",
    "tuneloop.schedulers": "tuneloop.tune.schedulers",
    "tuneloop.retention": "tuneloop.tune.retention",
    "tuneloop.experiment_state": "tuneloop.tune.state",
    "tuneloop.driver_memory": "tuneloop.tune.driver_memory",
    "tuneloop.trial": "tuneloop.tune.trainable",
    "tuneloop.sweep_progress": "tuneloop.sweep.progress",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module name as a module that forwards every attribute to the new one."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec):
        alias = types.ModuleType(spec.name, f"moved to {MOVED[spec.name]}")
        alias.__getattr__ = lambda attribute: getattr(importlib.import_module(MOVED[spec.name]), attribute)
        return alias

    def exec_module(self, module):
        pass


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModules())
