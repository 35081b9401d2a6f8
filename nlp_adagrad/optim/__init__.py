"""Optimizers for sparse token tables, each with an `effective_lr(param)` accessor.

`build_optimizer` maps a config type to its builder; add an optimizer by adding a row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from nlp_adagrad.config import (
    AdagradConfig,
    OptimConfig,
    RMSpropConfig,
    RowwiseAdagradConfig,
    SGDConfig,
    SparseAdamConfig,
)
from nlp_adagrad.optim.adagrad import Adagrad
from nlp_adagrad.optim.base import RowOptimizer, unique_rows
from nlp_adagrad.optim.rmsprop import RMSprop
from nlp_adagrad.optim.rowwise_adagrad import RowwiseAdagrad
from nlp_adagrad.optim.sgd import SGD
from nlp_adagrad.optim.sparse_adam import SparseAdam

__all__ = [
    "SGD",
    "Adagrad",
    "RMSprop",
    "RowOptimizer",
    "RowwiseAdagrad",
    "SparseAdam",
    "build_optimizer",
    "table_bytes",
    "unique_rows",
]

Params = Iterable[torch.Tensor]


def _adagrad_kwargs(c: AdagradConfig | RowwiseAdagradConfig) -> dict:
    return dict(
        lr=c.lr,
        lr_decay=c.lr_decay,
        weight_decay=c.weight_decay,
        initial_accumulator_value=c.initial_accumulator_value,
        eps=c.eps,
        maximize=c.maximize,
    )


_BUILDERS: dict[type, Callable[[OptimConfig, Params, int], RowOptimizer]] = {
    AdagradConfig: lambda c, params, steps: Adagrad(params, **_adagrad_kwargs(c)),
    RowwiseAdagradConfig: lambda c, params, steps: RowwiseAdagrad(params, **_adagrad_kwargs(c)),
    SGDConfig: lambda c, params, steps: SGD(
        params,
        lr=c.lr,
        weight_decay=c.weight_decay,
        maximize=c.maximize,
        decay_steps=steps if c.linear_decay else None,
    ),
    RMSpropConfig: lambda c, params, steps: RMSprop(
        params,
        lr=c.lr,
        alpha=c.alpha,
        eps=c.eps,
        weight_decay=c.weight_decay,
        maximize=c.maximize,
    ),
    SparseAdamConfig: lambda c, params, steps: SparseAdam(
        params,
        lr=c.lr,
        beta1=c.beta1,
        beta2=c.beta2,
        eps=c.eps,
        weight_decay=c.weight_decay,
        maximize=c.maximize,
    ),
}


# Optimizer state per weight of a sparse table (row-wise Adagrad: one float per row instead)
_STATE_PER_WEIGHT: dict[type, float] = {
    AdagradConfig: 1.0,
    RowwiseAdagradConfig: 0.0,
    SGDConfig: 0.0,
    RMSpropConfig: 1.0,
    SparseAdamConfig: 2.0,
}


def table_bytes(cfg: OptimConfig, rows: int, width: int) -> int:
    """Bytes a float32 table of rows x width takes with this optimizer's state and the two
    int32 per-row counters telemetry keeps (updates, last step)."""
    per_row = 4 * width * (1 + _STATE_PER_WEIGHT[type(cfg)]) + 8
    if isinstance(cfg, RowwiseAdagradConfig):
        per_row += 4
    return int(rows * per_row)


def build_optimizer(cfg: OptimConfig, params: Params, total_steps: int) -> RowOptimizer:
    """The configured optimizer; `total_steps` sets schedules that span the run (SGD decay)."""
    return _BUILDERS[type(cfg)](cfg, params, total_steps)
