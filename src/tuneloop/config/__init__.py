"""The experiment file: its typed schema (`schema`), YAML 1.2 reading (`yaml12`, `loading`), `--set`
overrides, error messages (`errors`), import paths and keyword arguments (`imports`), the search
space (`search_space`) and the registry of schedulers (`schedulers`). Nothing here imports Ray."""

from tuneloop.config.imports import check_imports
from tuneloop.config.loading import load_experiment, validate_experiment
from tuneloop.config.schema import (CallbackSpec, CategoricalParam, CheckpointConfig, EarlyStoppingConfig,
                                    ExperimentConfig, FloatParam, IntParam, RunConfig, SweepConfig)
from tuneloop.config.yaml12 import dump_yaml, parse_yaml

__all__ = ["CallbackSpec", "CategoricalParam", "CheckpointConfig", "EarlyStoppingConfig", "ExperimentConfig",
           "FloatParam", "IntParam", "RunConfig", "SweepConfig", "check_imports", "dump_yaml", "load_experiment",
           "parse_yaml", "validate_experiment"]
