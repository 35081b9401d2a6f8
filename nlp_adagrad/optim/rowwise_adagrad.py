"""Row-wise Adagrad: one accumulator per row, as FBGEMM's EXACT_ROWWISE_ADAGRAD keeps.

G_row += mean_j g_ij^2; w_i -= clr * g_i / (sqrt(G_row) + eps). The state is 1/dim of
element-wise Adagrad's, and a row's effective learning rate is exact: every coordinate gets
it. Vectors (biases) keep one accumulator per element.
"""

from __future__ import annotations

import torch

from nlp_adagrad.config import RowwiseAdagradConfig
from nlp_adagrad.optim.adagrad import Adagrad


def _row_shape(p: torch.Tensor) -> tuple[int, ...]:
    return (p.shape[0],) if p.dim() >= 2 else tuple(p.shape)


class RowwiseAdagrad(Adagrad):
    state_per_weight, state_per_row = 0.0, 1  # one G per row

    def __init__(
        self,
        params,
        lr: float = RowwiseAdagradConfig.lr,
        lr_decay: float = RowwiseAdagradConfig.lr_decay,
        weight_decay: float = RowwiseAdagradConfig.weight_decay,
        initial_accumulator_value: float = RowwiseAdagradConfig.initial_accumulator_value,
        eps: float = RowwiseAdagradConfig.eps,
        maximize: bool = RowwiseAdagradConfig.maximize,
    ) -> None:
        super().__init__(
            params, lr, lr_decay, weight_decay, initial_accumulator_value, eps, maximize
        )

    def _init_sum(self, p: torch.Tensor, value: float) -> torch.Tensor:
        return torch.full(_row_shape(p), value, dtype=p.dtype, device=p.device)

    @staticmethod
    def _row_mean_square(g: torch.Tensor) -> torch.Tensor:
        return g.square().reshape(g.shape[0], -1).mean(dim=1) if g.dim() >= 2 else g.square()

    @staticmethod
    def _per_row(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *([1] * (like.dim() - 1)))

    def _sparse_step(self, p, rows, values, state, group) -> None:
        total = state["sum"].index_select(0, rows).add_(self._row_mean_square(values))
        self._put_rows(state["sum"], rows, total)
        std = self._per_row(total.sqrt_().add_(group["eps"]), values)
        self._add_to_rows(p, rows, values / std, alpha=-self._clr(state["step"], group))

    def _dense_step(self, p, grad, state, group) -> None:
        state["sum"].add_(self._row_mean_square(grad))
        std = self._per_row(state["sum"].sqrt().add_(group["eps"]), grad)
        p.add_(grad / std, alpha=-self._clr(state["step"], group))
