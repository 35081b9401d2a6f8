"""Optimizers for sparse token tables, each with an `effective_lr(param)` accessor.

`build_optimizer` maps a config type to its builder; add an optimizer by adding a row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from nlp_adagrad.config import AdagradConfig, OptimConfig, SGDConfig
from nlp_adagrad.optim.adagrad import Adagrad
from nlp_adagrad.optim.base import RowOptimizer, unique_rows
from nlp_adagrad.optim.sgd import SGD

__all__ = ["SGD", "Adagrad", "RowOptimizer", "build_optimizer", "unique_rows"]

_BUILDERS: dict[type, Callable[[OptimConfig, Iterable[torch.Tensor]], RowOptimizer]] = {
    AdagradConfig: lambda c, params: Adagrad(
        params,
        lr=c.lr,
        lr_decay=c.lr_decay,
        weight_decay=c.weight_decay,
        initial_accumulator_value=c.initial_accumulator_value,
        eps=c.eps,
        maximize=c.maximize,
    ),
    SGDConfig: lambda c, params: SGD(
        params, lr=c.lr, weight_decay=c.weight_decay, maximize=c.maximize
    ),
}


def build_optimizer(cfg: OptimConfig, params: Iterable[torch.Tensor]) -> RowOptimizer:
    return _BUILDERS[type(cfg)](cfg, params)
