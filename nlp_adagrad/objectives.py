"""The experiments' objectives (README, What the experiments show): pure functions of float64
tensors and seeded data, with the exact references where they exist (minimisers, Hessians,
Newton's step, excess losses).

- `quadratic`: f = 1/2 theta^T H theta, H = R diag(1, condition) R^T (a canyon, rotated by R).
- `saddle`: f = 1/2 x^2 + 1/4 y^4 - 1/2 y^2; a saddle at 0, minima at (0, +-1), f = -1/4.
- `ShiftingRegression`: least squares whose features shrink 10x halfway (gradients ~100x
  smaller) while the optimum moves; the excess loss is exact, not sampled.
- `SparseFeatures`: logistic regression on Zipf-distributed binary features whose rare
  features carry the large weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from nlp_adagrad.vocab import EncodedSplit

ESCAPE = 0.5  # the saddle is escaped once |y| reaches half way to the minima at |y| = 1


def rotation(degrees: float) -> torch.Tensor:
    """The 2 x 2 rotation by `degrees`, float64."""
    a = math.radians(degrees)
    return torch.tensor(
        [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64
    )


def canyon_hessian(condition: float, degrees: float = 0.0) -> torch.Tensor:
    """R diag(1, condition) R^T: curvature 1 along one axis, `condition` across it."""
    r = rotation(degrees)
    return r @ torch.diag(torch.tensor([1.0, condition], dtype=torch.float64)) @ r.T


def quadratic(theta: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    """1/2 theta^T H theta (minimum 0 at 0)."""
    t = theta.reshape(-1)
    return 0.5 * t @ hessian @ t


def quadratic_gradient(theta: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    """H theta, in theta's shape."""
    return (hessian @ theta.reshape(-1)).reshape(theta.shape)


def newton_step(gradient: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    """H^(-1) g: the step that is invariant to any invertible linear reparameterisation."""
    return torch.linalg.solve(hessian, gradient.reshape(-1)).reshape(gradient.shape)


def saddle(theta: torch.Tensor) -> torch.Tensor:
    """1/2 x^2 + 1/4 y^4 - 1/2 y^2."""
    x, y = theta.reshape(-1)
    return 0.5 * x**2 + 0.25 * y**4 - 0.5 * y**2


def saddle_gradient(theta: torch.Tensor) -> torch.Tensor:
    """(x, y^3 - y), in theta's shape."""
    x, y = theta.reshape(-1)
    return torch.stack([x, y**3 - y]).reshape(theta.shape)


def history_bowl(theta: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """The earlier objective of the saddle's history runs: 1/2 |theta - (start + (0, 1))|^2,
    whose gradients put O(1) mass into the accumulator's y coordinate."""
    target = start.reshape(-1) + torch.tensor([0.0, 1.0], dtype=torch.float64)
    return 0.5 * ((theta.reshape(-1) - target) ** 2).sum()


@dataclass
class ShiftingRegression:
    """y = x . w*(t) + noise with x ~ N(0, s(t)^2 I): s = 1 and w* = `before` for the first
    half of the steps, then s = 0.1 and w* = `after`."""

    before: torch.Tensor  # (dim,) float64
    after: torch.Tensor
    steps: int
    batch: int = 32
    noise: float = 0.01
    shrink: float = 0.1

    @classmethod
    def draw(cls, dim: int, steps: int, seed: int) -> ShiftingRegression:
        g = torch.Generator().manual_seed(seed)
        before, after = torch.randn(2, dim, generator=g, dtype=torch.float64)
        return cls(before, after, steps)

    def shifted(self, step: int) -> bool:
        """Whether 0-based `step` is in the second half."""
        return step >= self.steps // 2

    def batch_at(self, step: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, targets) of a step: a pure function of (seed, step)."""
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        dim = self.before.numel()
        s, w = (self.shrink, self.after) if self.shifted(step) else (1.0, self.before)
        x = s * torch.randn(self.batch, dim, generator=g, dtype=torch.float64)
        return x, x @ w + self.noise * torch.randn(self.batch, generator=g, dtype=torch.float64)

    def excess_loss(self, w: torch.Tensor, step: int) -> float:
        """E[1/2 (x . w - y)^2] minus its minimum: 1/2 s^2 |w - w*|^2, exactly."""
        s, target = (self.shrink, self.after) if self.shifted(step) else (1.0, self.before)
        return float(0.5 * s**2 * ((w.reshape(-1) - target) ** 2).sum())


@dataclass
class SparseFeatures:
    """Binary features drawn by a Zipf law (about `per_example` distinct ones an example);
    feature j's true weight is N(0, 1) times 3 (rank_j / dim)^(1/2), so rare features decide
    the label when present. Labels ~ Bernoulli(sigmoid(x . w*)). Splits: train, val (picks
    the learning rate), test (reported)."""

    dim: int
    weights: np.ndarray  # (dim,) the true weights
    counts: np.ndarray  # (dim,) occurrences in the training split
    splits: dict[str, EncodedSplit]  # train, val, test: feature ids (CSR), 0/1 labels
    per_example: int = 8
    rare_from: int = 0  # features of rank >= this are "rare" (the 90% least frequent)

    @classmethod
    def draw(cls, dim: int, examples: int, seed: int, per_example: int = 8) -> SparseFeatures:
        rng = np.random.default_rng([seed, 13])
        p = 1.0 / np.arange(1, dim + 1) ** 1.1
        p /= p.sum()
        weights = rng.standard_normal(dim) * 3.0 * np.sqrt(np.arange(1, dim + 1) / dim)
        splits = {}
        for name in ("train", "val", "test"):
            drawn = np.sort(rng.choice(dim, size=(examples, per_example), p=p), axis=1)
            distinct = np.ones_like(drawn, dtype=bool)
            distinct[:, 1:] = drawn[:, 1:] != drawn[:, :-1]
            ids = drawn[distinct]
            offsets = np.concatenate([[0], np.cumsum(distinct.sum(axis=1))])
            margin = np.add.reduceat(weights[ids], offsets[:-1])
            labels = (rng.random(examples) < 1 / (1 + np.exp(-margin))).astype(np.int64)
            splits[name] = EncodedSplit(ids.astype(np.int64), offsets.astype(np.int64), labels)
        counts = np.bincount(splits["train"].ids, minlength=dim)
        return cls(dim, weights, counts, splits, per_example, rare_from=dim // 10)

    def true_weights_accuracy(self, split: str) -> float:
        """Accuracy of the true weights' sign rule: the most any model can expect."""
        s = self.splits[split]
        margin = np.add.reduceat(self.weights[s.ids], s.offsets[:-1])
        return float(((margin > 0) == (s.labels == 1)).mean())

    def rare_dominated(self, split: str) -> np.ndarray:
        """Examples whose rare features carry more true weight (in |w*|) than their common ones."""
        s = self.splits[split]
        w = np.abs(self.weights[s.ids])
        rare = np.add.reduceat(np.where(s.ids >= self.rare_from, w, 0.0), s.offsets[:-1])
        return rare > np.add.reduceat(w, s.offsets[:-1]) - rare
