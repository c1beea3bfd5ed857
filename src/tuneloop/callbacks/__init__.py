"""Callbacks: the base class, the runner, the seed's nine built-ins and tuneloop's own (one per module)."""

from tuneloop.callbacks.base import EVENTS, CallbackRunner, TrainingCallback
from tuneloop.callbacks.checkpoint import CheckpointCallback
from tuneloop.callbacks.compile import CompileCallback
from tuneloop.callbacks.early_stopping import EarlyStoppingCallback
from tuneloop.callbacks.gradient_clipping import GradientClippingCallback
from tuneloop.callbacks.gradient_monitor import GradientMonitorCallback
from tuneloop.callbacks.loss_prediction import LossPredictionCallback
from tuneloop.callbacks.nan_detection import NaNDetectionCallback
from tuneloop.callbacks.optimizer_mode import OptimizerModeCallback
from tuneloop.callbacks.overfit_detection import OverfitDetectionCallback
from tuneloop.callbacks.pruner import PrunerCallback
from tuneloop.callbacks.stop_agreement import StopAgreementCallback
from tuneloop.callbacks.wandb_logging import WandbLoggingCallback

__all__ = [
    "EVENTS", "CallbackRunner", "TrainingCallback",
    "NaNDetectionCallback", "OptimizerModeCallback", "GradientMonitorCallback",
    "LossPredictionCallback", "OverfitDetectionCallback", "WandbLoggingCallback",
    "PrunerCallback", "EarlyStoppingCallback", "CheckpointCallback",
    "CompileCallback", "GradientClippingCallback", "StopAgreementCallback",
]
