"""`SparseBag`: an `nn.EmbeddingBag(sparse=True)` whose backward emits a coalesced gradient.

Stock EmbeddingBag's sparse backward writes one gradient row per token occurrence (51,200 x 64
floats for a batch of 256 BBC articles) and leaves summing duplicates to whoever reads it: a
COO `coalesce` in torch.optim.Adagrad, ~4 ms a step. Here the backward sorts the ids once and
lets `embedding_bag` itself reduce the bag gradients into one row per distinct id:

    grad[row] = sum over occurrences k of row:  grad_out[bag(k)] * (1 / len(bag(k)) if mean)

The result is the same gradient (tested against EmbeddingBag's, coalesced) at a fraction of
the cost, and the optimizer can skip deduplication because `grad.is_coalesced()`. On CUDA the
backward emits it zero-padded to a size fixed by the batch instead (`zero_padded_bag_grad`), so
no step has to read the number of distinct ids back from the GPU.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nlp_adagrad import pages

ZERO_PADDED = "nlp_adagrad_zero_padded"  # attribute marking a zero_padded_bag_grad gradient


def sort_ids(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted ids, order). On CPU NumPy's introsort: 5x faster than torch.sort at 10^4 ids
    (measured, torch 2.13) and deterministic, so the summation order is fixed."""
    if ids.device.type == "cpu":
        order = torch.from_numpy(np.argsort(ids.numpy()))
        return ids[order], order
    return torch.sort(ids, stable=True)


def group_ids(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(distinct ids sorted, order, starts): ids[order] lists each distinct id's occurrences
    together, group g beginning at starts[g]; `embedding_bag(order, ..., starts)` sums groups.
    """
    sorted_ids, order = sort_ids(ids)
    rows, counts = torch.unique_consecutive(sorted_ids, return_counts=True)
    starts = torch.zeros_like(counts)
    torch.cumsum(counts[:-1], 0, out=starts[1:])
    return rows, order, starts


def _sample_bags_and_weights(
    ids: torch.Tensor, offsets: torch.Tensor, grad_out: torch.Tensor, mean: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(bag of each id position, its weight in the bag's output: 1 / length with mode=mean)."""
    num_bags = offsets.numel()
    # new_full, not new_tensor: filled on the device, no copy from the host
    lengths = torch.diff(offsets, append=offsets.new_full((1,), ids.numel()))
    # output_size: without it, CUDA would read the lengths back to size the result
    bag_of = torch.repeat_interleave(
        torch.arange(num_bags, device=ids.device), lengths, output_size=ids.numel()
    )
    weights = (1.0 / lengths.clamp(min=1).to(grad_out.dtype))[bag_of] if mean else None
    return bag_of, weights


def _sum_groups(grad_out, bag_of, weights, order, starts) -> torch.Tensor:
    """Row g: the weighted sum of the bag gradients of positions order[starts[g]:starts[g+1]]."""
    return F.embedding_bag(
        bag_of[order],
        grad_out,
        starts,
        mode="sum",
        per_sample_weights=None if weights is None else weights[order],
    )


def coalesced_bag_grad(
    ids: torch.Tensor, offsets: torch.Tensor, grad_out: torch.Tensor, mean: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted distinct ids, their summed gradient rows) for a bag forward's output grad."""
    bag_of, weights = _sample_bags_and_weights(ids, offsets, grad_out, mean)
    rows, order, starts = group_ids(ids)
    return rows, _sum_groups(grad_out, bag_of, weights, order, starts)


def zero_padded_bag_grad(
    ids: torch.Tensor, offsets: torch.Tensor, grad_out: torch.Tensor, mean: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same gradient at a size fixed by the batch: `ids.numel()` rows, the distinct ids
    sorted first, then the largest id repeated with zero rows.

    Nothing here needs the number of distinct ids on the host, so on CUDA the backward never
    waits for the GPU (`unique_consecutive` would, to size its output). Read as COO it is the
    same gradient (the padding adds zeros); the optimizers step it without deduplicating.
    """
    n = ids.numel()
    bag_of, weights = _sample_bags_and_weights(ids, offsets, grad_out, mean)
    sorted_ids, order = sort_ids(ids)  # the same order as group_ids: the same sums
    first = torch.ones(n, dtype=torch.bool, device=ids.device)
    first[1:] = sorted_ids[1:] != sorted_ids[:-1]
    group = torch.cumsum(first, 0) - 1  # the distinct id each sorted position belongs to
    rows = sorted_ids[-1:].expand(n).clone()  # the padding: the largest id
    rows.scatter_(0, group, sorted_ids)  # every write to a group carries the same id
    starts = torch.full((n,), n, dtype=torch.long, device=ids.device)  # padding: empty bags
    starts.scatter_reduce_(0, group, torch.arange(n, device=ids.device), reduce="amin")
    return rows, _sum_groups(grad_out, bag_of, weights, order, starts)


class _Emitted:
    """The storage address of the indices of the last gradient a SparseBag's backward emitted,
    and whether it was zero-padded.

    Autograd stores a first sparse gradient as a shallow copy that shares the indices but drops
    the coalesced flag and any attribute (torch 2.13). After accumulation, a `.grad` whose
    indices still sit at that address is exactly what was emitted, so its layout is marked
    again and the optimizer need not check or deduplicate (which, on CUDA, waits for the GPU).
    A gradient summed with another, in place or not, keeps its indices elsewhere (a new sum is
    allocated while the emitted one is alive), so it is read as a plain COO gradient.
    """

    def __init__(self) -> None:
        self.address: int | None = None
        self.zero_padded = False

    def restore_layout(self, weight: torch.Tensor) -> None:
        grad = weight.grad
        if grad is None or not grad.is_sparse:
            return
        emitted = grad._indices().data_ptr() == self.address
        # set either way: autograd may sum in place, keeping an earlier gradient's attribute
        setattr(grad, ZERO_PADDED, emitted and self.zero_padded)
        if emitted and not self.zero_padded and not grad.is_coalesced():
            weight.grad = torch.sparse_coo_tensor(
                grad._indices(),
                grad._values(),
                grad.shape,
                is_coalesced=True,
                check_invariants=False,
            )


class _BagFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, ids, offsets, mode, emitted, zero_padded):
        ctx.save_for_backward(ids, offsets)
        ctx.mode, ctx.shape, ctx.emitted, ctx.zero_padded = mode, weight.shape, emitted, zero_padded
        return F.embedding_bag(ids, weight, offsets, mode=mode)

    @staticmethod
    def backward(ctx, grad_out):
        ids, offsets = ctx.saved_tensors
        grad = sparse_bag_grad(ids, offsets, grad_out, ctx.mode, ctx.shape, ctx.zero_padded)
        ctx.emitted.address = grad._indices().data_ptr()
        ctx.emitted.zero_padded = ctx.zero_padded
        return grad, None, None, None, None, None


def sparse_bag_grad(
    ids, offsets, grad_out, mode: str, shape: torch.Size, zero_padded: bool = False
) -> torch.Tensor:
    """The table's sparse gradient from the bag outputs' gradient: one row per distinct id,
    or (`zero_padded`) one row per id position, distinct ids first (`zero_padded_bag_grad`)."""
    build = zero_padded_bag_grad if zero_padded else coalesced_bag_grad
    rows, values = build(ids, offsets, grad_out.contiguous(), mode == "mean")
    grad = torch.sparse_coo_tensor(
        rows.unsqueeze(0), values, shape, is_coalesced=not zero_padded, check_invariants=False
    )
    if zero_padded:
        setattr(grad, ZERO_PADDED, True)
    return grad


class SparseBag(nn.EmbeddingBag):
    """EmbeddingBag (mode mean or sum, sparse=True) with a coalesced sparse gradient.

    `zero_padded_grad`: None (the default) pads on CUDA, where sizing the distinct ids would
    wait for the GPU, and coalesces on CPU, where the smaller gradient makes a cheaper step.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, mode: str = "mean") -> None:
        if mode not in ("mean", "sum"):
            raise ValueError(f"mode must be mean or sum, got {mode!r}")
        weight = pages.empty(num_embeddings, embedding_dim)  # large tables on 2 MB pages
        super().__init__(num_embeddings, embedding_dim, mode=mode, sparse=True, _weight=weight)
        self.reset_parameters()  # what the constructor does without _weight
        self.zero_padded_grad: bool | None = None
        self._emitted = _Emitted()
        self.weight.register_post_accumulate_grad_hook(self._emitted.restore_layout)

    def pads_gradient(self, ids: torch.Tensor) -> bool:
        return ids.is_cuda if self.zero_padded_grad is None else self.zero_padded_grad

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        padded = self.pads_gradient(ids)
        return _BagFunction.apply(self.weight, ids, offsets, self.mode, self._emitted, padded)
