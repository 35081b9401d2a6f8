"""torch.optim.SparseAdam's update, with dense parameters stepped by the same formula.

On touched rows: m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
w -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps), t the parameter's step count.
The effective rate is the coefficient on the newest gradient g, which enters m with weight
(1 - b1): lr (1 - b1) sqrt(1 - b2^t) / (1 - b1^t) / (sqrt(v) + eps) at the row's last update
t, i.e. lr (1 - b1) / (1 - b1^t) / (sqrt(v_hat) + eps / sqrt(1 - b2^t)), v_hat = v / (1 - b2^t).
(Scaling m_hat as if it were the gradient overstates the rate 1 / (1 - b1) = 10x.)
"""

from __future__ import annotations

import math

import torch

from nlp_adagrad.config import SparseAdamConfig
from nlp_adagrad.optim.base import RowOptimizer


class SparseAdam(RowOptimizer):
    state_per_weight = 2.0  # m and v

    def __init__(
        self,
        params,
        lr: float = SparseAdamConfig.lr,
        beta1: float = SparseAdamConfig.beta1,
        beta2: float = SparseAdamConfig.beta2,
        eps: float = SparseAdamConfig.eps,
        weight_decay: float = SparseAdamConfig.weight_decay,
        maximize: bool = SparseAdamConfig.maximize,
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

    def _rate_scale(self, steps: torch.Tensor, state, group):
        b1, b2 = group["beta1"], group["beta2"]
        return group["lr"] * (1 - b1) * (1 - b2**steps).sqrt() / (1 - b1**steps)

    def _second_moment(self, state):
        return state["exp_avg_sq"]
