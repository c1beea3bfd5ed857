"""LossPredictionCallback: extrapolate the val-loss curve to the last epoch (`trainer._loss_prediction`)."""

import math

import numpy as np

from tuneloop.callbacks.base import TrainingCallback

MIN_HISTORY = 10  # epochs of history before the first fit


def fit_exponential(epochs, losses, at_epoch: float) -> float:
    """Fit `L(t) = A·exp(K·t)` by log-linear least squares and return L(at_epoch).

    Raises ValueError when a loss is ≤ 0 or non-finite, or the result is not finite.
    """
    t = np.asarray(epochs, dtype=float)
    y = np.asarray(losses, dtype=float)
    if not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise ValueError("an exponential fit needs finite positive losses")
    log_y = np.log(y)
    dt = t - t.mean()
    spread = float(dt @ dt)
    if spread == 0:
        raise ValueError("an exponential fit needs at least two distinct epochs")
    k = float(dt @ (log_y - log_y.mean())) / spread  # least squares slope of log L on t
    log_a = float(log_y.mean()) - k * float(t.mean())
    with np.errstate(over="ignore"):
        prediction = float(np.exp(log_a + k * at_epoch))
    if not math.isfinite(prediction) or prediction <= 0:
        raise ValueError(f"the fit gave a non-finite prediction {prediction}")
    return prediction


def neg_log10(loss: float) -> float | None:
    """-log10(loss) when defined (positive finite loss), else None."""
    if math.isfinite(loss) and loss > 0:
        return -math.log10(loss)
    return None


class LossPredictionCallback(TrainingCallback):
    """From the 10th epoch on, stores -log10 of the predicted final val_loss; None before.

    When the fit is impossible (a loss ≤ 0 or non-finite, or a non-finite result) the
    prediction falls back to -log10(last val_loss), or None when that is undefined too.
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
        if len(self.losses) < MIN_HISTORY:
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
