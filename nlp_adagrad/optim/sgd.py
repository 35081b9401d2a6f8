"""Plain SGD: one learning rate for every row, the flat baseline Adagrad is compared against."""

from __future__ import annotations

import torch

from nlp_adagrad.optim.base import RowOptimizer, num_selected


class SGD(RowOptimizer):
    def __init__(self, params, lr: float, weight_decay: float = 0.0, maximize: bool = False):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, maximize=maximize))

    def _sparse_step(self, p, rows, values, state, group) -> None:
        p.index_add_(0, rows, values, alpha=-group["lr"])

    def _dense_step(self, p, grad, state, group) -> None:
        p.add_(grad, alpha=-group["lr"])

    def _row_lr(self, p, rows, state, group) -> torch.Tensor:
        return torch.full((num_selected(p, rows),), group["lr"], device=p.device)
