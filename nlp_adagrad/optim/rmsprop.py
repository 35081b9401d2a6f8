"""Sparse, lazy RMSprop: the leaky accumulator decays only on the rows a step touches.

v = alpha * v + (1 - alpha) * g^2; w -= lr * g / (sqrt(v) + eps), as torch.optim.RMSprop
without momentum. Unlike Adagrad's sum, v forgets: when gradients shrink, rates climb back.
"""

from __future__ import annotations

import torch

from nlp_adagrad.config import RMSpropConfig
from nlp_adagrad.optim.base import RowOptimizer


class RMSprop(RowOptimizer):
    state_per_weight = 1.0  # v

    def __init__(
        self,
        params,
        lr: float = RMSpropConfig.lr,
        alpha: float = RMSpropConfig.alpha,
        eps: float = RMSpropConfig.eps,
        weight_decay: float = RMSpropConfig.weight_decay,
        maximize: bool = RMSpropConfig.maximize,
    ) -> None:
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["step"] = 0
                self.state[p]["square_avg"] = torch.zeros_like(p)

    def _sparse_step(self, p, rows, values, state, group) -> None:
        avg = state["square_avg"].index_select(0, rows).mul_(group["alpha"])
        avg.addcmul_(values, values, value=1 - group["alpha"])
        self._put_rows(state["square_avg"], rows, avg)
        self._add_to_rows(p, rows, values / avg.sqrt_().add_(group["eps"]), alpha=-group["lr"])

    def _dense_step(self, p, grad, state, group) -> None:
        avg = state["square_avg"].mul_(group["alpha"])
        avg.addcmul_(grad, grad, value=1 - group["alpha"])
        p.addcdiv_(grad, avg.sqrt().add_(group["eps"]), value=-group["lr"])

    def _rate_scale(self, steps, state, group):
        return group["lr"]

    def _second_moment(self, state):
        return state["square_avg"]
