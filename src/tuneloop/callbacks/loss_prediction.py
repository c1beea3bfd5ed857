"""LossPredictionCallback: extrapolate the val-loss curve to the last epoch (`trainer._loss_prediction`)."""

import math

from tuneloop.callbacks.base import TrainingCallback
from tuneloop.curves import fit_exponential  # the seed's fit; importable from here too

MIN_HISTORY = 10  # epochs without a prediction: the first fit comes at epoch index 10 (the 11th)


def neg_log10(loss: float) -> float | None:
    """-log10(loss) when defined (positive finite loss), else None."""
    if math.isfinite(loss) and loss > 0:
        return -math.log10(loss)
    return None


class LossPredictionCallback(TrainingCallback):
    """From epoch index 10 on (the 11th epoch), stores -log10 of the predicted final val_loss;
    None for the first 10 epochs (too little history for a reliable fit).

    When the fit is impossible (a loss ≤ 0 or non-finite, or a non-finite result) the
    prediction falls back to -log10(last val_loss), or None when that is undefined too.

    Under DDP: on every rank, from the val losses averaged over the ranks (the same prediction on each).
    """

    priority = 70

    def __init__(self, max_epochs: int):
        self.max_epochs = int(max_epochs)
        self.epochs: list[int] = []
        self.losses: list[float] = []

    def on_val_end(self, trainer, *, epoch, val_loss, **kwargs):
        self.epochs.append(int(epoch))
        self.losses.append(float(val_loss))
        trainer._loss_prediction = self.predict()

    def predict(self) -> float | None:
        if len(self.losses) <= MIN_HISTORY:
            return None
        try:
            return neg_log10(fit_exponential(self.epochs, self.losses, self.max_epochs - 1))
        except ValueError:
            return neg_log10(self.losses[-1])

    def state_dict(self) -> dict:
        return {"epochs": list(self.epochs), "losses": list(self.losses)}

    def load_state_dict(self, state: dict) -> None:
        self.epochs = [int(e) for e in state["epochs"]]
        self.losses = [float(v) for v in state["losses"]]
