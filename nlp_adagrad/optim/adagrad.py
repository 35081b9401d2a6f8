"""Adagrad with `torch.optim.Adagrad`'s semantics and a fused sparse step.

G += g*g; clr = lr / (1 + (step - 1) * lr_decay); w -= clr * g / (sqrt(G) + eps). Note `eps`
sits outside the square root, as in PyTorch. Sparse steps gather the touched rows of G and w,
update them and scatter them back: no COO coalesce, no `sparse_mask`.
"""

from __future__ import annotations

import torch

from nlp_adagrad.config import AdagradConfig
from nlp_adagrad.optim.base import RowOptimizer


class Adagrad(RowOptimizer):
    state_per_weight = 1.0  # G

    def __init__(
        self,
        params,
        lr: float = AdagradConfig.lr,
        lr_decay: float = AdagradConfig.lr_decay,
        weight_decay: float = AdagradConfig.weight_decay,
        initial_accumulator_value: float = AdagradConfig.initial_accumulator_value,
        eps: float = AdagradConfig.eps,
        maximize: bool = AdagradConfig.maximize,
    ) -> None:
        defaults = dict(
            lr=lr,
            lr_decay=lr_decay,
            weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value,
            eps=eps,
            maximize=maximize,
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                state["step"] = 0
                state["sum"] = self._init_sum(p, group["initial_accumulator_value"])

    def _init_sum(self, p: torch.Tensor, value: float) -> torch.Tensor:
        return torch.full_like(p, value, memory_format=torch.preserve_format)

    @staticmethod
    def _clr(step, group: dict):
        """lr decayed to `step` (an int, or a tensor of steps)."""
        return group["lr"] / (1 + (step - 1) * group["lr_decay"])

    def _sparse_step(self, p, rows, values, state, group) -> None:
        total = state["sum"].index_select(0, rows).addcmul_(values, values)
        self._put_rows(state["sum"], rows, total)
        std = total.sqrt_().add_(group["eps"])
        self._add_to_rows(p, rows, values / std, alpha=-self._clr(state["step"], group))

    def _dense_step(self, p, grad, state, group) -> None:
        state["sum"].addcmul_(grad, grad, value=1)
        std = state["sum"].sqrt().add_(group["eps"])
        p.addcdiv_(grad, std, value=-self._clr(state["step"], group))

    def _rate_scale(self, steps, state, group):
        return self._clr(steps, group) if group["lr_decay"] else group["lr"]

    def _second_moment(self, state):
        return state["sum"]
