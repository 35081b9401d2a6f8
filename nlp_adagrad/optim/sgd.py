"""Plain SGD: one learning rate for every row, the flat baseline the adaptive ones are
compared against. `linear_decay` adds fastText's schedule: lr falls linearly to zero over the
run's `total_steps`."""

from __future__ import annotations

import torch

from nlp_adagrad.config import SGDConfig
from nlp_adagrad.optim.base import RowOptimizer


class SGD(RowOptimizer):
    state_per_weight = 0.0

    def __init__(
        self,
        params,
        lr: float = SGDConfig.lr,
        weight_decay: float = SGDConfig.weight_decay,
        maximize: bool = SGDConfig.maximize,
        linear_decay: bool = SGDConfig.linear_decay,
        total_steps: int | None = None,
    ) -> None:
        if linear_decay and total_steps is None:
            raise ValueError("linear_decay needs total_steps, the steps the rate falls over")
        decay_steps = total_steps if linear_decay else None
        defaults = dict(
            lr=lr, weight_decay=weight_decay, maximize=maximize, decay_steps=decay_steps
        )
        super().__init__(params, defaults)

    @staticmethod
    def _lr(step: int, group: dict) -> float:
        if group["decay_steps"] is None:
            return group["lr"]
        return group["lr"] * max(0.0, 1.0 - (step - 1) / group["decay_steps"])

    def _sparse_step(self, p, rows, values, state, group) -> None:
        self._add_to_rows(p, rows, values, alpha=-self._lr(state["step"], group))

    def _dense_step(self, p, grad, state, group) -> None:
        p.add_(grad, alpha=-self._lr(state["step"], group))

    def _rate_scale(self, steps: torch.Tensor, state, group):
        if group["decay_steps"] is None:
            return group["lr"]
        return group["lr"] * (1.0 - (steps - 1) / group["decay_steps"]).clamp(min=0.0)
