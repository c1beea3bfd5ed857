"""tuneloop: Ray Tune + Optuna sweeps for PyTorch with a priority-ordered callback Trainer."""

__version__ = "0.1.0"
