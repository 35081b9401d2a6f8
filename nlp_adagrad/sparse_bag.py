"""`SparseBag`: an `nn.EmbeddingBag(sparse=True)` whose backward emits a coalesced gradient.

Stock EmbeddingBag's sparse backward writes one gradient row per token occurrence (51,200 x 64
floats for a batch of 256 BBC articles) and leaves summing duplicates to whoever reads it: a
COO `coalesce` in torch.optim.Adagrad, ~4 ms a step. Here the backward sorts the ids once and
lets `embedding_bag` itself reduce the bag gradients into one row per distinct id:

    grad[row] = sum over occurrences k of row:  grad_out[bag(k)] * (1 / len(bag(k)) if mean)

The result is the same gradient (tested against EmbeddingBag's, coalesced) at a fraction of
the cost, and the optimizer can skip deduplication because `grad.is_coalesced()`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def group_ids(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(distinct ids sorted, order, starts): ids[order] lists each distinct id's occurrences
    together, group g beginning at starts[g]; `embedding_bag(order, ..., starts)` sums groups.

    On CPU the sort is NumPy's introsort: 5x faster than torch.sort at 10^4 ids (measured,
    torch 2.13) and deterministic, so the summation order is fixed.
    """
    if ids.device.type == "cpu":
        order = torch.from_numpy(np.argsort(ids.numpy()))
        sorted_ids = ids[order]
    else:
        sorted_ids, order = torch.sort(ids, stable=True)
    rows, counts = torch.unique_consecutive(sorted_ids, return_counts=True)
    starts = torch.zeros_like(counts)
    torch.cumsum(counts[:-1], 0, out=starts[1:])
    return rows, order, starts


def coalesced_bag_grad(
    ids: torch.Tensor, offsets: torch.Tensor, grad_out: torch.Tensor, mean: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted distinct ids, their summed gradient rows) for a bag forward's output grad."""
    num_bags = offsets.numel()
    lengths = torch.diff(offsets, append=offsets.new_tensor([ids.numel()]))
    # output_size: without it, CUDA would read the lengths back to size the result
    bag_of = torch.repeat_interleave(
        torch.arange(num_bags, device=ids.device), lengths, output_size=ids.numel()
    )
    rows, order, starts = group_ids(ids)
    weights = None
    if mean:
        weights = (1.0 / lengths.clamp(min=1).to(grad_out.dtype))[bag_of[order]]
    values = F.embedding_bag(
        bag_of[order], grad_out, starts, mode="sum", per_sample_weights=weights
    )
    return rows, values


class _Emitted:
    """The storage address of the indices of the last gradient a SparseBag's backward emitted.

    Autograd stores a first sparse gradient as a shallow copy that shares the indices but drops
    the coalesced flag (torch 2.13). After accumulation, a `.grad` whose indices still sit at
    that address is exactly what was emitted, sorted and distinct, so the flag is set again and
    the optimizer need not check (a check that, on CUDA, waits for the GPU). A gradient summed
    with another is allocated while the emitted one is alive, so it never shares its address.
    """

    def __init__(self) -> None:
        self.address: int | None = None

    def restore_coalesced_flag(self, weight: torch.Tensor) -> None:
        grad = weight.grad
        if (
            grad is not None
            and grad.is_sparse
            and not grad.is_coalesced()
            and grad._indices().data_ptr() == self.address
        ):
            weight.grad = torch.sparse_coo_tensor(
                grad._indices(),
                grad._values(),
                grad.shape,
                is_coalesced=True,
                check_invariants=False,
            )


class _BagFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, ids, offsets, mode, emitted):
        ctx.save_for_backward(ids, offsets)
        ctx.mode, ctx.shape, ctx.emitted = mode, weight.shape, emitted
        return F.embedding_bag(ids, weight, offsets, mode=mode)

    @staticmethod
    def backward(ctx, grad_out):
        ids, offsets = ctx.saved_tensors
        grad = sparse_bag_grad(ids, offsets, grad_out, ctx.mode, ctx.shape)
        ctx.emitted.address = grad._indices().data_ptr()
        return grad, None, None, None, None


def sparse_bag_grad(ids, offsets, grad_out, mode: str, shape: torch.Size) -> torch.Tensor:
    """The table's sparse gradient, one row per distinct id, from the bag outputs' gradient."""
    rows, values = coalesced_bag_grad(ids, offsets, grad_out.contiguous(), mode == "mean")
    return torch.sparse_coo_tensor(
        rows.unsqueeze(0), values, shape, is_coalesced=True, check_invariants=False
    )


class SparseBag(nn.EmbeddingBag):
    """EmbeddingBag (mode mean or sum, sparse=True) with a coalesced sparse gradient."""

    def __init__(self, num_embeddings: int, embedding_dim: int, mode: str = "mean") -> None:
        if mode not in ("mean", "sum"):
            raise ValueError(f"mode must be mean or sum, got {mode!r}")
        super().__init__(num_embeddings, embedding_dim, mode=mode, sparse=True)
        self._emitted = _Emitted()
        self.weight.register_post_accumulate_grad_hook(self._emitted.restore_coalesced_flag)

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return _BagFunction.apply(self.weight, ids, offsets, self.mode, self._emitted)
