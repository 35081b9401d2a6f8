"""Adagrad with `torch.optim.Adagrad`'s semantics and a fused sparse step.

G += g*g; clr = lr / (1 + (step - 1) * lr_decay); w -= clr * g / (sqrt(G) + eps). Note `eps`
sits outside the square root, as in PyTorch. Sparse steps gather the touched rows of G and w,
update them and scatter them back: no COO coalesce, no `sparse_mask`. With `fused` (the
default when the C++ kernels build) the same float operations run in one C++ pass over the
rows, split over torch's threads: a fraction of the operator calls, and the same numbers to
~1e-7 (its sqrt is correctly rounded, torch's vectorised one not always: adagrad.cpp).
"""

from __future__ import annotations

import torch

from nlp_adagrad import pages
from nlp_adagrad.config import AdagradConfig
from nlp_adagrad.kernels import native_kernels
from nlp_adagrad.optim.base import ALL_ROWS, RowOptimizer


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
        fused: bool | None = AdagradConfig.fused,
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
        choice = {None: "auto", True: "true", False: "false"}[fused]
        self._kernels = native_kernels(choice, "optim.fused")
        self._row_ranges: dict[int, torch.Tensor] = {}
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                state["step"] = 0
                state["sum"] = self._init_sum(p, group["initial_accumulator_value"])

    def _init_sum(self, p: torch.Tensor, value: float) -> torch.Tensor:
        if p.device.type == "cpu" and p.is_contiguous():  # a large table's on 2 MB pages
            return pages.empty_like(p).fill_(value)
        return torch.full_like(p, value, memory_format=torch.preserve_format)

    @staticmethod
    def _clr(step, group: dict):
        """lr decayed to `step` (an int, or a tensor of steps)."""
        return group["lr"] / (1 + (step - 1) * group["lr_decay"])

    def _sparse_step(self, p, rows, values, state, group) -> None:
        if self._kernels is not None and fusable(p, rows, values):
            self._kernels.adagrad_rows_(
                p,
                state["sum"],
                rows,
                values.contiguous(),
                -self._clr(state["step"], group),
                group["eps"],
            )
            return
        total = state["sum"].index_select(0, rows).addcmul_(values, values)
        self._put_rows(state["sum"], rows, total)
        std = total.sqrt_().add_(group["eps"])
        self._add_to_rows(p, rows, values / std, alpha=-self._clr(state["step"], group))

    def _dense_step(self, p, grad, state, group) -> None:
        total = state["sum"]
        if (
            self._kernels is not None
            and fusable(p, None, grad)
            and total.shape == p.shape
            and total.is_contiguous()
        ):
            # a dense tensor is all rows of itself: one call instead of four (~20 us each)
            rows = p.shape[0] if p.dim() else 1
            self._kernels.adagrad_rows_(
                p.view(rows, -1),
                total.view(rows, -1),
                self._all_rows(rows),
                grad.contiguous().view(rows, -1),
                -self._clr(state["step"], group),
                group["eps"],
            )
            return
        total.addcmul_(grad, grad, value=1)
        std = total.sqrt().add_(group["eps"])
        p.addcdiv_(grad, std, value=-self._clr(state["step"], group))

    def _all_rows(self, n: int) -> torch.Tensor:
        """0..n-1, made once per size."""
        rows = self._row_ranges.get(n)
        if rows is None:
            rows = self._row_ranges[n] = torch.arange(n)
        return rows

    @torch.no_grad()
    def effective_lr(self, p, rows=ALL_ROWS):
        native = self._native_read(p, rows, per_coordinate=False)
        return super().effective_lr(p, rows) if native is None else native[0]

    @torch.no_grad()
    def effective_lr_coords(self, p, rows=ALL_ROWS):
        native = self._native_read(p, rows, per_coordinate=True)
        return super().effective_lr_coords(p, rows) if native is None else native[0]

    @torch.no_grad()
    def rates_and_updates(self, p, rows=ALL_ROWS):
        native = self._native_read(p, rows, per_coordinate=False)
        return super().rates_and_updates(p, rows) if native is None else tuple(native)

    def _native_read(self, p, rows, per_coordinate: bool) -> list[torch.Tensor] | None:
        """(rates, updates) of `rows` from one C++ pass over them (a telemetry snapshot's
        read: ~14 torch calls in one), where the kernels and a sparse table's CPU float32
        state allow; else None."""
        state = self.state.get(p, {})
        if self._kernels is None or "last_step" not in state or not state["step"]:
            return None
        total = state["sum"]
        if not fusable(total, None, total):
            return None
        if isinstance(rows, slice):
            rows = torch.arange(*rows.indices(p.shape[0]))
        group = self._group_of(p)
        return self._kernels.adagrad_rates(
            total,
            state["updates"],
            state["last_step"],
            rows.to(torch.int64).contiguous(),
            group["lr"],
            group["lr_decay"],
            group["eps"],
            per_coordinate,
        )

    def _rate_scale(self, steps, state, group):
        return self._clr(steps, group) if group["lr_decay"] else group["lr"]

    def _second_moment(self, state):
        return state["sum"]


def fusable(p: torch.Tensor, rows: torch.Tensor | None, values: torch.Tensor) -> bool:
    """Whether the C++ row step takes these tensors: CPU, float32, a contiguous table (and
    its accumulator: a dense step passes `rows` None)."""
    return (
        p.device.type == "cpu"
        and p.dtype == values.dtype == torch.float32
        and p.is_contiguous()
        and (rows is None or rows.dtype == torch.int64)
    )
