"""What every optimizer here shares: sparse gradients reduced to unique rows, per-row update
counts and last-update steps, and the `effective_lr` accessors that telemetry reads.

A row's effective learning rate is one definition for every optimizer: the coefficient that
multiplied the row's newest gradient in its last update, `scale / (sqrt(mean_j S_ij) + eps)`,
where S is the optimizer's second-moment state (Adagrad's G, RMSprop's v, SparseAdam's v) and
`scale` the step's numerator at that update. The mean runs over the row's coordinates inside
the square root, so a coordinate that got almost no gradient cannot dominate the summary (the
arithmetic mean of coordinate rates did: DESIGN section 5). `effective_lr_coords` keeps the
per-coordinate rates for the spread.

A sparse gradient from `EmbeddingBag(sparse=True)` holds one row per token occurrence. We sum
duplicates with one sort and an `embedding_bag` instead of a COO `coalesce`, then gather,
update and scatter only those rows: a step costs what the batch touches, never the table size.
"""

from __future__ import annotations

import logging
from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F
import torch.optim.optimizer as torch_optimizer

from nlp_adagrad.sparse_bag import ZERO_PADDED, group_ids

log = logging.getLogger(__name__)

ALL_ROWS = slice(None)
# int32 per row: steps whose gradient touched the row, and the step of its latest such update
ROW_COUNTERS = ("updates", "last_step")


def num_selected(p: torch.Tensor, rows: slice | torch.Tensor) -> int:
    """How many rows of `p` the selection `rows` (a slice or 1-D ids) picks."""
    if isinstance(rows, slice):
        return len(range(*rows.indices(p.shape[0])))
    return rows.numel()


def rate_per_row(
    scale: float | torch.Tensor, second_moment: torch.Tensor, eps: float
) -> torch.Tensor:
    """scale / (sqrt(mean_j S_ij) + eps) per row, in float64: a row's effective rate.

    A row whose second moment is all zero was only ever touched by exactly-zero gradients (a
    saturated softmax does that): its "rate" would be scale / eps, which measures eps, not
    the row. It is reported missing (NaN), as rows never touched are.
    """
    # reduce in the state's dtype first: a float64 copy of a 10^7 x 64 table would be 5 GB
    mean_square = second_moment.reshape(second_moment.shape[0], -1).mean(dim=1).double()
    rate = scale / (mean_square.sqrt() + eps)
    return rate.masked_fill(mean_square == 0, float("nan"))


def rate_per_coordinate(
    scale: float | torch.Tensor, second_moment: torch.Tensor, eps: float, width: int
) -> torch.Tensor:
    """scale / (sqrt(S_ij) + eps) per coordinate, (rows, width) float64; NaN where S_ij = 0.

    A one-column S (row-wise Adagrad) gives every coordinate of its row the row's rate.
    """
    s = second_moment.reshape(second_moment.shape[0], -1).double()
    if isinstance(scale, torch.Tensor):
        scale = scale.reshape(-1, 1)
    rate = (scale / (s.sqrt() + eps)).masked_fill(s == 0, float("nan"))
    return rate.expand(s.shape[0], width) if s.shape[1] == 1 else rate


def first_occurrences(rows: torch.Tensor) -> torch.Tensor:
    """True where a sorted row id appears for the first time."""
    first = torch.ones_like(rows, dtype=torch.bool)
    first[1:] = rows[1:] != rows[:-1]
    return first


def last_true_position(mask: torch.Tensor) -> torch.Tensor:
    """For each position, the last position at or before it where `mask` holds (mask[0] must)."""
    positions = torch.arange(mask.numel(), device=mask.device)
    return torch.cummax(torch.where(mask, positions, 0), dim=0).values


def unique_rows(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted distinct row ids, summed gradient rows) of a sparse COO gradient.

    A gradient flagged coalesced (a `SparseBag`'s) or whose ids are found sorted and distinct
    passes through. Otherwise one sort (`group_ids`)
    groups the duplicates and `embedding_bag` sums each group, cheaper than `coalesce` or
    `index_add_`.
    """
    indices, values = grad._indices()[0], grad._values()
    if grad.is_coalesced() or bool((indices[1:] > indices[:-1]).all()):
        return indices, values
    rows, order, starts = group_ids(indices)
    flat = values.reshape(values.shape[0], -1)
    summed = F.embedding_bag(order, flat, starts, mode="sum")
    return rows, summed.reshape(rows.numel(), *values.shape[1:])


class RowOptimizer(torch.optim.Optimizer):
    """Base class: subclasses implement `_sparse_step`, `_dense_step`, `_rate_scale` and, if
    they divide by a second moment, `_second_moment`.

    State per parameter: `step` (int) and, for parameters that ever got a sparse gradient,
    `updates` (int32 per row: optimizer steps whose gradient touched the row) and `last_step`.
    """

    state_per_weight: float = 0.0  # state floats per weight of a table (memory estimates)
    state_per_row: int = 0  # and per row
    _kernels: ModuleType | None = None  # the C++ kernels, where a subclass loads them

    # torch.optim.Optimizer wraps these four in torch._disable_dynamo, whose first call imports
    # torch._dynamo: 0.9-1.4 s of every run's start-up, for a guard against a compiler that
    # never runs here. The functions underneath (`__wrapped__`) do the same work.
    def add_param_group(self, param_group: dict) -> None:  # noqa: D102
        torch.optim.Optimizer.add_param_group.__wrapped__(self, param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:  # noqa: D102
        if set_to_none and not _profiling():  # torch's, minus its profiler label (~15 us)
            for group in self.param_groups:
                for p in group["params"]:
                    p.grad = None
            return
        torch.optim.Optimizer.zero_grad.__wrapped__(self, set_to_none)

    def state_dict(self) -> dict:  # noqa: D102
        return torch.optim.Optimizer.state_dict.__wrapped__(self)

    def step(self, closure=None):  # noqa: D102 (torch's signature)
        # torch.optim.Optimizer wraps `step` for its step hooks and a profiler label, ~40 us
        # of a 0.8 ms classifier step; the wrapper runs only when something asks for either
        if hooks_or_profiler(self):
            return _step_with_hooks(self, closure)
        return self._step(closure)

    step.hooked = True  # what tells torch.optim.Optimizer not to wrap it

    @torch.no_grad()
    def _step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                state["step"] = state.get("step", 0) + 1
                grad = p.grad
                if grad.is_sparse:
                    if getattr(grad, ZERO_PADDED, False):
                        rows, values = grad._indices()[0], grad._values()
                        first = first_occurrences(rows)
                        self._source = last_true_position(first)
                    else:
                        rows, values = unique_rows(grad)
                        first = None  # every row distinct
                    if group["maximize"]:
                        values = -values
                    if group["weight_decay"]:
                        # lazy L2: only rows in the batch decay (torch refuses sparse + decay)
                        values = values.add(p.index_select(0, rows), alpha=group["weight_decay"])
                    try:
                        self._sparse_step(p, rows, values, state, group)
                    finally:
                        self._source = None
                    self._count_rows(p, state, rows, first)
                else:
                    if group["maximize"]:
                        grad = -grad
                    if group["weight_decay"]:
                        grad = grad.add(p, alpha=group["weight_decay"])
                    self._dense_step(p, grad, state, group)
        return loss

    def _count_rows(self, p, state: dict, rows: torch.Tensor, first: torch.Tensor | None) -> None:
        """updates[rows] += 1 and last_step[rows] = step, each distinct row once (`first`
        marks them in a zero-padded gradient; None: all rows are distinct); and the tracked
        count of updated rows (`track_updated_rows`) grows by the rows updated first now."""
        updates, last_step = self.row_counters(p)
        limit, fresh = self._tracked().get(p, (0, None))  # untracked: nothing to add to
        if self._kernels is not None and rows.device.type == "cpu":
            added = self._kernels.count_rows_(updates, last_step, rows, state["step"], limit)
            if fresh is not None:
                fresh += added
            return
        if fresh is not None:
            distinct = rows if first is None else rows[first]
            fresh += ((updates[distinct] == 0) & (distinct < limit)).sum()
        ones = torch.ones_like(rows, dtype=torch.int32) if first is None else first.to(torch.int32)
        updates.index_add_(0, rows, ones)
        # repeated rows of a zero-padded gradient all write the same step
        last_step.index_fill_(0, rows, state["step"])

    def track_updated_rows(self, p: torch.Tensor, limit: int) -> None:
        """Keep the number of rows of `p` below `limit` that any step updated, counted as the
        steps count their rows, so a telemetry snapshot reads one number (`updated_rows`)
        instead of passing over every row's counter: its cost stays with the sampled rows,
        whatever the vocabulary. Counted from the counters now (a resumed run's too)."""
        self._tracked()[p] = (limit, self._count_updated(p, limit))

    def updated_rows(self, p: torch.Tensor, limit: int) -> int:
        """Rows of `p` below `limit` that any step updated: the tracked count, else a pass
        over the counters (NumPy's on the CPU: torch's builds a tensor of the nonzeros)."""
        tracked_limit, count = self._tracked().get(p, (None, None))
        if tracked_limit == limit:
            return int(count)
        return int(self._count_updated(p, limit))

    def fresh_rows(self, p: torch.Tensor) -> tuple[int, torch.Tensor]:
        """(limit, int64 counter) a step adds the rows below limit it updated first to; for
        an untracked parameter limit 0 (nothing counted) and a spare counter."""
        tracked = self._tracked().get(p)
        return tracked or (0, torch.zeros(1, dtype=torch.int64, device=p.device))

    def _tracked(self) -> dict:
        return self.__dict__.setdefault("_updated_rows", {})

    def _count_updated(self, p: torch.Tensor, limit: int) -> torch.Tensor:
        counters = self.row_updates(p)[:limit]
        if counters.device.type == "cpu":
            return torch.tensor([np.count_nonzero(counters.numpy())], dtype=torch.int64)
        return torch.count_nonzero(counters).reshape(1).to(torch.int64)

    def row_counters(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(updates, last_step) of `p`, made at zero on its first sparse step."""
        state = self.state[p]
        if "updates" not in state:
            # int32: 2^31 steps is plenty, and half the memory of int64 per row
            for key in ROW_COUNTERS:
                state[key] = torch.zeros(p.shape[0], dtype=torch.int32, device=p.device)
        return state["updates"], state["last_step"]

    def load_state_dict(self, state_dict: dict) -> None:
        """torch casts every state tensor but `step` to the parameter's dtype; keep counts int.

        Checkpoints written before `last_step` existed get the checkpoint's step for every
        updated row: exact for rates that do not depend on the step (Adagrad and RMSprop at
        their defaults), the latest possible step for the others.
        """
        counters = {
            i: {key: s[key] for key in ROW_COUNTERS if key in s}
            for i, s in state_dict["state"].items()
            if "updates" in s
        }
        torch.optim.Optimizer.load_state_dict.__wrapped__(self, state_dict)
        params = [p for group in self.param_groups for p in group["params"]]
        for i, saved in counters.items():
            state, device = self.state[params[i]], params[i].device
            if "last_step" not in saved:
                log.warning("checkpoint predates per-row last steps; using its step for each row")
                updated = saved["updates"] > 0
                saved["last_step"] = updated.to(torch.int32) * int(state["step"])
            for key, value in saved.items():
                state[key] = value.to(device, torch.int32)
        for p, (limit, _) in self._tracked().items():  # counted again from what was loaded
            self._tracked()[p] = (limit, self._count_updated(p, limit))

    _source: torch.Tensor | None = None  # set while stepping a zero-padded gradient

    def _put_rows(self, t: torch.Tensor, rows: torch.Tensor, new: torch.Tensor) -> None:
        """t[rows] = new. Rows of a zero-padded gradient repeat its last row: every copy takes
        the values computed for that row's real entry, so the repeated writes agree."""
        t.index_copy_(0, rows, new if self._source is None else new[self._source])

    def _add_to_rows(self, p: torch.Tensor, rows: torch.Tensor, delta, alpha: float) -> None:
        """p[rows] += alpha * delta, as gather, add, scatter.

        `index_add_` gives the same result but, on CPU, costs 5x more for rows of 4 floats and
        1.4x more for rows of 64 (measured, torch 2.13, 6,000 rows of a 3M-row table); with
        distinct rows nothing needs accumulating.
        """
        self._put_rows(p, rows, p.index_select(0, rows).add_(delta, alpha=alpha))

    def _sparse_step(self, p, rows, values, state, group) -> None:
        """Update p[rows] and its state rows; write them with `_put_rows` / `_add_to_rows`."""
        raise NotImplementedError

    def _dense_step(self, p, grad, state, group) -> None:
        raise NotImplementedError

    def _rate_scale(self, steps: torch.Tensor, state: dict, group: dict):
        """Numerator of the step at each row's last update (`steps`, float64): a float when it
        does not depend on the step, else one value per row."""
        raise NotImplementedError

    def _second_moment(self, state: dict) -> torch.Tensor | None:
        """The state the step divides by (sqrt(.) + eps), or None (SGD)."""
        return None

    def _group_of(self, p: torch.Tensor) -> dict:
        for group in self.param_groups:
            if any(q is p for q in group["params"]):
                return group
        raise KeyError("parameter is not optimized by this optimizer")

    def row_updates(self, p: torch.Tensor) -> torch.Tensor:
        """Steps whose gradient touched each row of `p` (zeros before its first sparse step)."""
        updates = self.state.get(p, {}).get("updates")
        if updates is None:
            return torch.zeros(p.shape[0], dtype=torch.int32, device=p.device)
        return updates

    @torch.no_grad()
    def rates_and_updates(
        self, p: torch.Tensor, rows: slice | torch.Tensor = ALL_ROWS
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(effective_lr(p, rows), row_updates(p)[rows]): what a telemetry snapshot reads."""
        return self.effective_lr(p, rows), self.row_updates(p)[rows]

    def has_coordinate_rates(self, p: torch.Tensor) -> bool:
        """Whether the coordinates of a row of `p` can have rates of their own."""
        second = self._second_moment(self.state.get(p, {}))
        return second is not None and second[:1].numel() > 1

    def _rate_parts(self, p: torch.Tensor, rows):
        """(scale, second moment rows or None, eps, never-updated mask or None) for `p[rows]`."""
        state = self.state.get(p, {})
        group = self._group_of(p)
        if "last_step" in state:  # sparse gradients: each row's own last update
            steps = state["last_step"][rows].double()
            never = state["updates"][rows] == 0
        else:  # dense gradients: every row was updated at every step
            steps = torch.full((num_selected(p, rows),), float(state["step"]), device=p.device)
            steps = steps.double()
            never = None
        second = self._second_moment(state)
        return (
            self._rate_scale(steps, state, group),
            None if second is None else second[rows],
            group.get("eps", 0.0),
            never,
        )

    @torch.no_grad()
    def effective_lr(self, p: torch.Tensor, rows: slice | torch.Tensor = ALL_ROWS) -> torch.Tensor:
        """Effective learning rate of each row of `p` in `rows` (float64), from the optimizer's
        own state: the coefficient on the row's newest gradient, summarised over its columns
        through the mean second moment (the module docstring).

        Rows never updated are NaN: they have no rate of their own yet. The cost is that of
        the rows asked for, so telemetry on the vocabulary never pays for bigram buckets.
        """
        n = num_selected(p, rows)
        if self.state.get(p, {}).get("step", 0) == 0:
            return torch.full((n,), float("nan"), dtype=torch.float64, device=p.device)
        scale, second, eps, never = self._rate_parts(p, rows)
        if second is None:
            rates = torch.as_tensor(scale, dtype=torch.float64, device=p.device).expand(n).clone()
        else:
            rates = rate_per_row(scale, second, eps)
        return rates if never is None else rates.masked_fill(never, float("nan"))

    @torch.no_grad()
    def effective_lr_coords(
        self, p: torch.Tensor, rows: slice | torch.Tensor = ALL_ROWS
    ) -> torch.Tensor:
        """Per-coordinate effective rates of `p[rows]`, (rows, columns) float64: the exact
        coefficient on each coordinate's newest gradient. NaN for rows never updated and for
        coordinates whose second moment is still zero (they never got a non-zero gradient).
        """
        n, width = num_selected(p, rows), p[:1].numel()
        if self.state.get(p, {}).get("step", 0) == 0:
            return torch.full((n, width), float("nan"), dtype=torch.float64, device=p.device)
        scale, second, eps, never = self._rate_parts(p, rows)
        if second is None:
            scale = torch.as_tensor(scale, dtype=torch.float64, device=p.device)
            rates = scale.reshape(-1, 1).expand(n, width).clone()
        else:
            rates = rate_per_coordinate(scale, second, eps, width)
        if never is not None:
            rates = rates.masked_fill(never.reshape(-1, 1), float("nan"))
        return rates


def _profiling() -> bool:
    return torch.autograd.profiler._is_profiler_enabled


def hooks_or_profiler(optimizer: RowOptimizer) -> bool:
    """Whether a step must go through torch's wrapper: step hooks, or the profiler is on."""
    return _profiling() or bool(
        optimizer._optimizer_step_pre_hooks
        or optimizer._optimizer_step_post_hooks
        or torch_optimizer._global_optimizer_pre_hooks
        or torch_optimizer._global_optimizer_post_hooks
    )


# torch's own wrapper around the step: hooks, then the profiler label
_step_with_hooks = torch.optim.Optimizer.profile_hook_step(RowOptimizer._step)
