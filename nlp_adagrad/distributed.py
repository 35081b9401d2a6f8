"""Data parallelism under torchrun: the process group, and a step whose gradients are the
one-process gradients bit for bit, on every rank.

Each rank pools (embedding-bag forward) its slice of the global batch; one all-gather of the
pooled rows (batch x dim floats, small) gives every rank the whole batch's bag outputs. Every
rank then runs the classifier, the loss and the backward on the global batch, and turns the
gradient at the bag outputs into the table's sparse gradient with the same function, on the
same ids in the same order, as one process does (every rank holds the token ids of the whole
corpus). Summing per-rank partial gradients instead would round differently, and Adagrad's
g / sqrt(G) amplifies that on coordinates whose gradients nearly cancel (measured ~1e-3).
NCCL has no sparse all-reduce (pytorch#22400); this path needs only a dense all-gather, so
it runs on gloo (CPU) and NCCL (CUDA) alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from nlp_adagrad.batching import make_batch
from nlp_adagrad.errors import UserError
from nlp_adagrad.sparse_bag import sparse_bag_grad
from nlp_adagrad.vocab import EncodedSplit


@dataclass(frozen=True)
class Topology:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, global_docs: np.ndarray) -> np.ndarray:
        """This rank's documents of a global batch: positions rank, rank + W, rank + 2W, ..."""
        return global_docs[self.rank :: self.world_size]


def backend_for(device: torch.device) -> str:
    """NCCL between GPUs, gloo between CPU processes: the step needs only a dense all-gather,
    which both have."""
    return "nccl" if device.type == "cuda" else "gloo"


def setup(device: torch.device) -> tuple[Topology, torch.device]:
    """Join torchrun's process group; a plain run is rank 0 of 1 on `device`.

    On CUDA each process takes the GPU of its LOCAL_RANK, as torchrun expects.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Topology(), device
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise UserError(
                f"torchrun started process {local_rank} on a machine with "
                f"{torch.cuda.device_count()} visible GPUs; use --nproc_per_node <= the GPU count"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend_for(device))
    return Topology(dist.get_rank(), dist.get_world_size()), device


def teardown(topology: Topology) -> None:
    if topology.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def gather_bags(local: torch.Tensor, topology: Topology, global_size: int) -> torch.Tensor:
    """The bag outputs of the whole global batch, in its order, from each rank's slice.

    Rank r pooled documents r, r + W, r + 2W, ... of the batch (W ranks).
    """
    if topology.world_size == 1:
        return local
    width = -(-global_size // topology.world_size)
    padded = local.new_zeros((width, *local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(topology.world_size)]
    dist.all_gather(parts, padded)
    return torch.stack(parts, dim=1).reshape(width * topology.world_size, *local.shape[1:])[
        :global_size
    ]


def global_batch_backward(
    model: nn.Module,
    split: EncodedSplit,
    global_docs: np.ndarray,
    topology: Topology,
    device: torch.device,
) -> torch.Tensor:
    """Loss of the global batch, with every parameter's .grad set as one process would set it.

    This rank pools only its slice; the classifier, loss and gradients run on the whole batch.
    """
    batch = make_batch(split, global_docs).to(device)
    mine = make_batch(split, topology.share(global_docs)).to(device)
    with torch.no_grad():
        local = model.embedding(mine.ids, mine.offsets)
    bags = gather_bags(local, topology, len(global_docs)).requires_grad_()
    loss = F.cross_entropy(model.classify(bags), batch.labels, reduction="sum") / len(global_docs)
    loss.backward()
    table = model.embedding
    table.weight.grad = sparse_bag_grad(
        batch.ids,
        batch.offsets,
        bags.grad,
        table.mode,
        table.weight.shape,
        zero_padded=table.pads_gradient(batch.ids),
    )
    return loss
