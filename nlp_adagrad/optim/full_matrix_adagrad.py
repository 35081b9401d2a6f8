"""Full-matrix Adagrad for small dense parameters: G = sum_t g_t g_t^T over the flattened
parameter, step w -= lr (G^(1/2) + eps I)^(-1) g, through G's eigendecomposition.

The diagonal of G is Adagrad's accumulator; the off-diagonal terms are what make the method
invariant to rotations of the parameter space (diagonal Adagrad is not: README, What the
experiments show). O(d^3) a step, so for parameters of a few hundred numbers at most; a sparse
gradient is refused. A coordinate's effective rate is the diagonal entry of
lr (G^(1/2) + eps I)^(-1): the coefficient on its newest gradient in its own update.
"""

from __future__ import annotations

import torch

from nlp_adagrad.config import FullMatrixAdagradConfig
from nlp_adagrad.errors import UserError
from nlp_adagrad.optim.base import ALL_ROWS, RowOptimizer

MAX_WEIGHTS = 1024  # a d x d accumulator and its eigendecomposition every step


class FullMatrixAdagrad(RowOptimizer):
    def __init__(
        self,
        params,
        lr: float = FullMatrixAdagradConfig.lr,
        eps: float = FullMatrixAdagradConfig.eps,
        weight_decay: float = FullMatrixAdagradConfig.weight_decay,
        maximize: bool = FullMatrixAdagradConfig.maximize,
    ) -> None:
        super().__init__(params, dict(lr=lr, eps=eps, weight_decay=weight_decay, maximize=maximize))
        for group in self.param_groups:
            for p in group["params"]:
                if p.numel() > MAX_WEIGHTS:
                    raise UserError(
                        f"optim=full_matrix_adagrad keeps a d x d matrix per parameter: "
                        f"{p.numel()} weights is past its limit of {MAX_WEIGHTS}; use optim=adagrad"
                    )
                self.state[p]["step"] = 0
                self.state[p]["outer"] = torch.zeros(p.numel(), p.numel(), dtype=p.dtype)

    def _inverse_root(self, state, group) -> torch.Tensor:
        """(G^(1/2) + eps I)^(-1) on G's range, from its eigendecomposition (G is symmetric
        PSD). Directions no gradient has touched (eigenvalues at rounding level) get 0, not
        1 / eps: every gradient lies in G's range, which holds the gradient itself."""
        values, vectors = torch.linalg.eigh(state["outer"])
        root = values.clamp(min=0).sqrt()
        touched = root > root.max() * 1e-10
        inverse = torch.where(touched, 1 / (root + group["eps"]), torch.zeros_like(root))
        return (vectors * inverse) @ vectors.T

    def _dense_step(self, p, grad, state, group) -> None:
        g = grad.reshape(-1)
        state["outer"].add_(torch.outer(g, g))
        step = self._inverse_root(state, group) @ g
        p.add_(step.reshape(p.shape), alpha=-group["lr"])

    def _sparse_step(self, p, rows, values, state, group) -> None:
        raise UserError("optim=full_matrix_adagrad takes dense gradients only; use optim=adagrad")

    def _rate_scale(self, steps, state, group):
        return group["lr"]

    @torch.no_grad()
    def effective_lr_coords(self, p: torch.Tensor, rows=ALL_ROWS) -> torch.Tensor:
        state, group = self.state[p], self._group_of(p)
        if state["step"] == 0:
            return torch.full(p.shape, float("nan"), dtype=torch.float64)
        diagonal = group["lr"] * torch.diagonal(self._inverse_root(state, group))
        return diagonal.double().reshape(p.shape[0], -1)[rows]

    @torch.no_grad()
    def effective_lr(self, p: torch.Tensor, rows=ALL_ROWS) -> torch.Tensor:
        """lr / (sqrt(trace(G) / d) + eps): the rate through the mean square, as for Adagrad."""
        state, group = self.state[p], self._group_of(p)
        mean_square = torch.trace(state["outer"]).double() / p.numel()
        rate = group["lr"] / (mean_square.sqrt() + group["eps"])
        return rate.expand(p.shape[0])[rows].clone()
