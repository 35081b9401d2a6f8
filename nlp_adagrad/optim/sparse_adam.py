"""torch.optim.SparseAdam's update, with dense parameters stepped by the same formula.

On touched rows: m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
w -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps), t the parameter's step count.
The effective rate of a row is lr / (sqrt(v_hat) + eps) with v_hat = v / (1 - b2^t): the scale
applied to the bias-corrected first moment m_hat = m / (1 - b1^t).
"""

from __future__ import annotations

import math

import torch

from nlp_adagrad.optim.base import RowOptimizer, rate_per_row


class SparseAdam(RowOptimizer):
    def __init__(
        self,
        params,
        lr: float = 1e-3,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        maximize: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, maximize=maximize
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["step"] = 0
                self.state[p]["exp_avg"] = torch.zeros_like(p)
                self.state[p]["exp_avg_sq"] = torch.zeros_like(p)

    @staticmethod
    def _step_size(state: dict, group: dict) -> float:
        t = state["step"]
        return group["lr"] * math.sqrt(1 - group["beta2"] ** t) / (1 - group["beta1"] ** t)

    def _sparse_step(self, p, rows, values, state, group) -> None:
        m = state["exp_avg"].index_select(0, rows)
        m.add_(values.sub(m).mul_(1 - group["beta1"]))  # torch's form: m + (g - m)(1 - b1)
        v = state["exp_avg_sq"].index_select(0, rows)
        v.add_(values.square().sub_(v).mul_(1 - group["beta2"]))
        self._put_rows(state["exp_avg"], rows, m)
        self._put_rows(state["exp_avg_sq"], rows, v)
        step = m / v.sqrt().add_(group["eps"])
        self._add_to_rows(p, rows, step, alpha=-self._step_size(state, group))

    def _dense_step(self, p, grad, state, group) -> None:
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.add_(grad.sub(m).mul_(1 - group["beta1"]))
        v.add_(grad.square().sub_(v).mul_(1 - group["beta2"]))
        p.addcdiv_(m, v.sqrt().add_(group["eps"]), value=-self._step_size(state, group))

    def _row_lr(self, p, rows, state, group) -> torch.Tensor:
        v_hat = state["exp_avg_sq"][rows] / (1 - group["beta2"] ** state["step"])
        return rate_per_row(group["lr"], v_hat, group["eps"])
