"""OverfitDetectionCallback: flag epochs where train loss falls while val loss rises (`trainer._overfit_gap_ratio`)."""

from tuneloop.callbacks.base import TrainingCallback


def _strictly(values, increasing: bool) -> bool:
    steps = zip(values, values[1:])
    return all((b > a) if increasing else (b < a) for a, b in steps)


class OverfitDetectionCallback(TrainingCallback):
    """From absolute epoch `warmup_epochs` on: if, over the last `window_size` epoch-to-epoch steps,
    train loss strictly decreased at every step and val loss strictly increased at every step,
    sets `trainer._overfit_gap_ratio = val_loss / train_loss` and warns; otherwise None (not sticky).

    Under DDP: on every rank, from the losses averaged over the ranks (the same verdict on each).
    """

    priority = 75

    def __init__(self, warmup_epochs: int = 5, window_size: int = 5):
        if window_size < 1:
            raise ValueError(f"window_size >= 1 must hold, but got window_size={window_size}")
        self.warmup_epochs = int(warmup_epochs)
        self.window_size = int(window_size)
        self.train_losses: list[float] = []
        self.val_losses: list[float] = []

    def on_epoch_end(self, trainer, *, epoch, train_loss, val_loss, **kwargs):
        self.train_losses.append(float(train_loss))
        self.val_losses.append(float(val_loss))
        trainer._overfit_gap_ratio = None
        window = self.window_size + 1  # points spanning window_size steps
        if epoch < self.warmup_epochs or len(self.train_losses) < window:
            return
        train, val = self.train_losses[-window:], self.val_losses[-window:]
        if _strictly(train, increasing=False) and _strictly(val, increasing=True) and train_loss != 0:
            trainer._overfit_gap_ratio = val_loss / train_loss
            print(f"[tuneloop] epoch {epoch}: overfitting — train loss fell and val loss rose over "
                  f"the last {self.window_size} epoch(s); val/train = {trainer._overfit_gap_ratio:.3g}",
                  flush=True)

    def state_dict(self) -> dict:
        return {"train_losses": list(self.train_losses), "val_losses": list(self.val_losses)}

    def load_state_dict(self, state: dict) -> None:
        self.train_losses = [float(v) for v in state["train_losses"]]
        self.val_losses = [float(v) for v in state["val_losses"]]
