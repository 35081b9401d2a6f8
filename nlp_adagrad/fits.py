"""Log-log fits of effective learning rates: binned least squares and the theory curves.

A slope is the least-squares slope of log(eff_lr) on log(x) through log-spaced bin means, each
bin weighing the same (otherwise the many rare tokens decide it alone). The theory curves are
what a stationary-gradient model predicts (README, "What the slopes mean"):
- against updates, each update adding one squared gradient of fixed mean size: slope -1/2;
- against count, a token's c occurrences per epoch falling at random over S steps per epoch,
  repeats within a step adding coherently: eff_lr ~ (c (1 + c / S))^(-1/2), slope -1/2 for
  c << S turning to -1 for c >> S.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NUM_FIT_BINS = 20
THEORY_SLOPE_VS_UPDATES = -0.5


@dataclass
class Fit:
    slope: float
    intercept: float
    bin_x: np.ndarray  # bin means of log(x)
    bin_y: np.ndarray  # bin means of log(eff_lr)


def on_log_scale(x: np.ndarray, eff_lr: np.ndarray) -> np.ndarray:
    """Tokens a log-log fit or plot can use: x >= 1 and a finite, positive rate."""
    return (x >= 1) & np.isfinite(eff_lr) & (eff_lr > 0)


def _bin_of(lx: np.ndarray, num_bins: int) -> np.ndarray:
    """Log-spaced bin of each point: equal widths in log(x) between its min and max."""
    span = lx.max() - lx.min()
    return np.minimum(((lx - lx.min()) / span * num_bins).astype(np.int64), num_bins - 1)


def binned_fit(
    x: np.ndarray,
    eff_lr: np.ndarray,
    num_bins: int = NUM_FIT_BINS,
    weights: np.ndarray | None = None,
) -> Fit | None:
    """Least-squares line through log-binned means of log(eff_lr) against log(x).

    `weights` make a sample's bin means those of what it stands for (tokens of weight 0 are
    shown, not counted). None when fewer than two bins hold tokens.
    """
    keep = on_log_scale(x, eff_lr)
    if weights is not None:
        keep &= weights > 0
        weights = weights[keep]
    lx, ly = np.log(x[keep].astype(np.float64)), np.log(eff_lr[keep])
    if len(lx) == 0 or lx.min() == lx.max():
        return None
    which = _bin_of(lx, num_bins)
    n = np.bincount(which, weights=weights, minlength=num_bins)
    full = n > 0
    if full.sum() < 2:
        return None
    wx = lx if weights is None else lx * weights
    wy = ly if weights is None else ly * weights
    bin_x = np.bincount(which, weights=wx, minlength=num_bins)[full] / n[full]
    bin_y = np.bincount(which, weights=wy, minlength=num_bins)[full] / n[full]
    dx = bin_x - bin_x.mean()
    slope = float(dx @ (bin_y - bin_y.mean()) / (dx @ dx))  # least squares, closed form
    return Fit(slope, float(bin_y.mean() - slope * bin_x.mean()), bin_x, bin_y)


def theory_vs_count(log_count: np.ndarray, steps_per_epoch: int) -> np.ndarray:
    """log eff_lr (up to a constant) predicted against count: -1/2 log(c (1 + c / S))."""
    c = np.exp(log_count)
    return -0.5 * np.log(c * (1 + c / max(steps_per_epoch, 1)))
