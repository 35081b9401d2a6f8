"""Data parallelism under torchrun: the process group, and gradients combined so that every
rank applies the identical optimizer step.

Each rank computes the gradient of its slice of the global batch, with the loss summed over
its documents and divided by the global batch size; summing those gradients over ranks gives
exactly the single-process gradient of the global batch. Dense gradients are all-reduced. A
sparse table's gradient is all-gathered as (row ids, rows) and concatenated; the optimizer then
sums duplicate rows as it does for one process. NCCL has no sparse all-reduce (pytorch#22400),
and gathering ids and rows works on any backend, so the same path serves gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from nlp_adagrad.errors import UserError


@dataclass(frozen=True)
class Topology:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: torch.device) -> Topology:
    """Join torchrun's process group (gloo on CPU); a plain run is rank 0 of 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Topology()
    if device.type != "cpu":
        raise UserError(
            "data-parallel training runs on CPU (gloo) for now; use trainer.device=cpu under "
            "torchrun"
        )
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    return Topology(dist.get_rank(), dist.get_world_size())


def teardown(topology: Topology) -> None:
    if topology.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def _gather_sparse(grad: torch.Tensor | None, shape: torch.Size, world_size: int):
    """All ranks' (ids, rows) of one sparse gradient, concatenated as one COO tensor."""
    if grad is None:
        ids = torch.zeros(0, dtype=torch.int64)
        rows = torch.zeros((0, *shape[1:]))
    else:
        ids, rows = grad._indices()[0], grad._values()
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(world_size)]
    dist.all_gather(sizes, torch.tensor([ids.numel()]))
    longest = int(max(s.item() for s in sizes))
    padded_ids = torch.zeros(longest, dtype=ids.dtype)
    padded_ids[: ids.numel()] = ids
    padded_rows = torch.zeros((longest, *rows.shape[1:]), dtype=rows.dtype)
    padded_rows[: rows.shape[0]] = rows
    all_ids = [torch.empty_like(padded_ids) for _ in range(world_size)]
    all_rows = [torch.empty_like(padded_rows) for _ in range(world_size)]
    dist.all_gather(all_ids, padded_ids)
    dist.all_gather(all_rows, padded_rows)
    ids = torch.cat([a[: int(n.item())] for a, n in zip(all_ids, sizes)])
    rows = torch.cat([a[: int(n.item())] for a, n in zip(all_rows, sizes)])
    return torch.sparse_coo_tensor(ids.unsqueeze(0), rows, shape, check_invariants=False)


def sync_gradients(model: nn.Module, topology: Topology) -> None:
    """Make every rank's gradients the sum over ranks (a no-op for one process)."""
    if topology.world_size == 1:
        return
    for p in model.parameters():
        if isinstance(p, nn.Parameter) and _is_sparse_table(model, p):
            p.grad = _gather_sparse(p.grad, p.shape, topology.world_size)
        else:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)


def _is_sparse_table(model: nn.Module, p: torch.Tensor) -> bool:
    return p is model.embedding.weight


def all_sum(value: float, topology: Topology) -> float:
    """Sum of a number over ranks."""
    if topology.world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item())
