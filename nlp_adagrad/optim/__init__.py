"""Optimizers for sparse token tables, each with an `effective_lr(param)` accessor.

`build_optimizer` maps a config type to its builder; add an optimizer by adding a row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import torch

from nlp_adagrad.config import (
    AdagradConfig,
    FullMatrixAdagradConfig,
    OptimConfig,
    RMSpropConfig,
    RowwiseAdagradConfig,
    SGDConfig,
    SparseAdamConfig,
)
from nlp_adagrad.optim.adagrad import Adagrad
from nlp_adagrad.optim.base import RowOptimizer, unique_rows
from nlp_adagrad.optim.full_matrix_adagrad import FullMatrixAdagrad
from nlp_adagrad.optim.rmsprop import RMSprop
from nlp_adagrad.optim.rowwise_adagrad import RowwiseAdagrad
from nlp_adagrad.optim.sgd import SGD
from nlp_adagrad.optim.sparse_adam import SparseAdam

__all__ = [
    "SGD",
    "Adagrad",
    "FullMatrixAdagrad",
    "RMSprop",
    "RowOptimizer",
    "RowwiseAdagrad",
    "SparseAdam",
    "OPTIMIZERS",
    "build_optimizer",
    "table_bytes",
    "unique_rows",
]

Params = Iterable[torch.Tensor]

# config type -> optimizer; each constructor takes its config's fields by name, and its
# defaults are the config's, so a default lives in one place (nlp_adagrad.config)
OPTIMIZERS: dict[type, type[RowOptimizer]] = {
    AdagradConfig: Adagrad,
    RowwiseAdagradConfig: RowwiseAdagrad,
    SGDConfig: SGD,
    RMSpropConfig: RMSprop,
    SparseAdamConfig: SparseAdam,
    FullMatrixAdagradConfig: FullMatrixAdagrad,
}


def table_bytes(cfg: OptimConfig, rows: int, width: int) -> int:
    """Bytes a float32 table of rows x width takes with this optimizer's state and the two
    int32 per-row counters telemetry keeps (updates, last step)."""
    optimizer = OPTIMIZERS[type(cfg)]
    per_row = 4 * width * (1 + optimizer.state_per_weight) + 4 * optimizer.state_per_row + 8
    return int(rows * per_row)


def build_optimizer(cfg: OptimConfig, params: Params, total_steps: int) -> RowOptimizer:
    """The configured optimizer; `total_steps` sets schedules that span the run (SGD decay)."""
    kwargs = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "name"}
    if isinstance(cfg, SGDConfig):
        kwargs["total_steps"] = total_steps
    return OPTIMIZERS[type(cfg)](params, **kwargs)
