"""OptimizerModeCallback: switch optimizers with train/eval modes (SPlus, ScheduleFree) around validation."""

from tuneloop.callbacks.base import TrainingCallback


def _mode_method(trainer, name):
    optimizer = trainer.optimizer
    method = getattr(optimizer, name, None)
    if optimizer is trainer.model or not callable(method):
        return None
    return method


class OptimizerModeCallback(TrainingCallback):
    """`optimizer.train()` before training batches, `optimizer.eval()` before validation; no-op otherwise.

    Under DDP: on every rank (each holds its own optimizer, stepped with the same averaged gradients).
    """

    priority = 10

    def on_train_epoch_begin(self, trainer, **kwargs):
        method = _mode_method(trainer, "train")
        if method is not None:
            method()

    def on_val_begin(self, trainer, **kwargs):
        method = _mode_method(trainer, "eval")
        if method is not None:
            method()
