"""Learning-curve extrapolation: predict a val-loss curve's value at a later epoch.

Three predictors, all `fit(epochs, losses, at_epoch) -> float` (epochs are 0-based and absolute;
the fit raises ValueError when it cannot give a finite value):

- `exponential`: the seed's `L(t) = A·exp(K·t)`, log-linear least squares (LossPredictionCallback).
- `shifted_exponential`: `L(t) = a·exp(-b·t) + c`.
- `power_law`: `L(t) = a·t^(-b) + c` with `t = epoch + 1`.

The two three-parameter fits are variable-projection least squares: for each rate `b` on a
log grid, `a` and `c` are the linear least-squares solution; the rate of the best grid point is
then refined by `scipy.optimize.minimize_scalar` (bounded, at most `MAX_EVALS` evaluations).
One fit of 40 points costs about a millisecond.

`predict_final(epochs, losses, at_epoch, method)` adds a guard: an ill-behaved curve (non-finite
values, too short, too noisy, or rising at its end) or an absurd fit (not finite, negative for
positive losses, or far above the observed range) falls back to `fallback_loss` (the mean of the
last three losses), which also is the `last` method.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

MAX_EVALS = 100  # cap on the evaluations of one rate refinement
ROUGHNESS = 3.0  # total variation / range above which a curve counts as noise
MIN_POINTS = 4  # fewer points than this: the guard falls back
TAIL = 3  # losses averaged by the fallback


def fit_exponential(epochs: Sequence[float], losses: Sequence[float], at_epoch: float) -> float:
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


def _shifted_exponential(t, a, b, c):
    return a * np.exp(-b * t) + c


def _power_law(t, a, b, c):
    return a * t ** (-b) + c


# model, rate grid (the rate stays within it), time axis from the 0-based epoch
_THREE_PARAMETER = {
    "shifted_exponential": (_shifted_exponential, np.geomspace(1e-3, 3.0, 64), lambda e: e),
    "power_law": (_power_law, np.geomspace(1e-2, 8.0, 64), lambda e: e + 1.0),
}


def _linear_part(basis: np.ndarray, y: np.ndarray):
    """Least squares of y ≈ a·basis + c for each row of `basis` at once: (a, c, sum of squares)."""
    n, sx, sy = y.shape[-1], basis.sum(-1), y.sum()
    sxx, sxy = (basis * basis).sum(-1), (basis * y).sum(-1)
    det = n * sxx - sx * sx
    a = (n * sxy - sx * sy) / det
    c = (sy - a * sx) / n
    sse = ((a[..., None] * basis + c[..., None] - y) ** 2).sum(-1)
    return a, c, np.where(np.isfinite(sse) & (np.abs(det) > 1e-12 * np.maximum(1.0, n * sxx)), sse, np.inf)


def _fit_three(method: str, epochs, losses, at_epoch: float) -> float:
    """Variable projection: the rate on a log grid, then refined between its grid neighbours by
    `scipy.optimize.minimize_scalar` (bounded, at most MAX_EVALS evaluations); a and c are the
    linear least-squares solution for each rate."""
    model, grid, axis = _THREE_PARAMETER[method]
    t = axis(np.asarray(epochs, dtype=float))
    y = np.asarray(losses, dtype=float)
    if len(y) < 3 or not np.all(np.isfinite(y)):
        raise ValueError(f"a {method} fit needs at least three finite losses, but got {len(y)}")
    if len(np.unique(t)) < 3:
        raise ValueError(f"a {method} fit needs at least three distinct epochs")
    with np.errstate(all="ignore"):
        a, c, sse = _linear_part(model(t[None, :], 1.0, grid[:, None], 0.0), y)
        best = int(np.argmin(sse))
        if not math.isfinite(sse[best]):
            raise ValueError(f"no {method} fits the curve")
        rate = float(grid[best])
        if sse[best] > 1e-20 * float(y @ y):  # not an exact fit already: refine the rate
            from scipy.optimize import minimize_scalar

            def objective(log_rate: float) -> float:
                return float(_linear_part(model(t, 1.0, math.exp(log_rate), 0.0)[None, :], y)[2][0])

            low, high = math.log(grid[max(best - 1, 0)]), math.log(grid[min(best + 1, len(grid) - 1)])
            found = minimize_scalar(objective, bounds=(low, high), method="bounded",
                                    options={"maxiter": MAX_EVALS, "xatol": 1e-6})
            if found.success and math.isfinite(found.fun) and found.fun <= sse[best]:
                rate = math.exp(float(found.x))
        a_, c_, _ = _linear_part(model(t, 1.0, rate, 0.0)[None, :], y)
        prediction = float(model(axis(float(at_epoch)), float(a_[0]), rate, float(c_[0])))
    if not math.isfinite(prediction):
        raise ValueError(f"the {method} fit gave a non-finite prediction {prediction}")
    return prediction


def fit_shifted_exponential(epochs, losses, at_epoch: float) -> float:
    """Fit `L(t) = a·exp(-b·t) + c` (b > 0) and return L(at_epoch)."""
    return _fit_three("shifted_exponential", epochs, losses, at_epoch)


def fit_power_law(epochs, losses, at_epoch: float) -> float:
    """Fit `L(t) = a·t^(-b) + c` (b > 0, t = epoch + 1) and return L(at_epoch)."""
    return _fit_three("power_law", epochs, losses, at_epoch)


def fallback_loss(losses: Sequence[float]) -> float:
    """The mean of the last `TAIL` finite losses (NaN when there is none): the guard's robust choice."""
    finite = [float(v) for v in losses if math.isfinite(v)]
    return float(np.mean(finite[-TAIL:])) if finite else math.nan


FITS: dict[str, Callable[..., float]] = {
    "exponential": fit_exponential,
    "shifted_exponential": fit_shifted_exponential,
    "power_law": fit_power_law,
    "last": lambda epochs, losses, at_epoch: fallback_loss(losses),
}
METHODS = tuple(FITS)


def ill_behaved(losses: Sequence[float]) -> str | None:
    """Why a curve should not be extrapolated (too short, non-finite, noisy, rising), else None."""
    y = np.asarray(losses, dtype=float)
    if len(y) < MIN_POINTS:
        return f"fewer than {MIN_POINTS} points"
    if not np.all(np.isfinite(y)):
        return "a non-finite loss"
    span = float(y.max() - y.min())
    if span == 0:
        return "a flat curve"
    if float(np.abs(np.diff(y)).sum()) > ROUGHNESS * span:
        return "too noisy (total variation > 3 × range)"
    tail = y[-max(MIN_POINTS, len(y) // 3):]
    slope = float(np.polyfit(np.arange(len(tail)), tail, 1)[0])
    if slope > 0 and y[-1] > y.min() + 0.1 * span:
        return "rising at its end"
    return None


def plausible(prediction: float, losses: Sequence[float]) -> bool:
    """A prediction no higher than one observed range above the maximum, and not below zero when
    the losses are positive (otherwise not below the minimum by more than three ranges). Falling
    far below the observed range is what an early, steep curve does: only the sign bounds it."""
    y = np.asarray(losses, dtype=float)
    span = float(y.max() - y.min())
    low = 0.0 if y.min() > 0 else float(y.min()) - 3.0 * span
    return math.isfinite(prediction) and low <= prediction <= float(y.max()) + span


def predict_final(epochs: Sequence[float], losses: Sequence[float], at_epoch: float,
                  method: str = "power_law", guard: bool = True) -> float:
    """The loss at `at_epoch` extrapolated by `method` from the (epoch, loss) history.

    With `guard`, an ill-behaved curve or an implausible or failed fit gives `fallback_loss`;
    without it, a failed fit raises ValueError.
    """
    if method not in FITS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, but got {method!r}")
    if guard and ill_behaved(losses) is not None:
        return fallback_loss(losses)
    try:
        prediction = FITS[method](epochs, losses, at_epoch)
    except ValueError:
        if not guard:
            raise
        return fallback_loss(losses)
    if guard and not plausible(prediction, losses):
        return fallback_loss(losses)
    return prediction
