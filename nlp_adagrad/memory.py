"""Memory a run's token table will take, checked against what the device has before a byte
is allocated: one line with the figures, not an allocator traceback after asking for 36 GB.
"""

from __future__ import annotations

import torch

from nlp_adagrad.config import Config
from nlp_adagrad.errors import UserError
from nlp_adagrad.optim import table_bytes


def available_bytes(device: torch.device) -> int | None:
    """Memory free for new tensors on the device (None where it cannot be read)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def check_memory(
    cfg: Config, num_rows: int, num_classes: int, device: torch.device, tables: int = 1
) -> None:
    """Refuse in one line, before allocating, token tables (`tables` of them: skip-gram has
    two) and optimizer state larger than the memory available (not an allocator traceback
    after asking for 36 GB)."""
    width = getattr(cfg.model, "dim", num_classes)  # logreg: one column per class
    need = tables * table_bytes(cfg.optim, num_rows, width) + 8 * num_rows  # + int64 counts
    free = available_bytes(device)
    if free is not None and need > free:
        raise UserError(
            f"the token table and {cfg.optim.name} state need ~{need / 2**30:.1f} GiB "
            f"({num_rows:,} rows x {width} floats) but {device.type} has "
            f"{free / 2**30:.1f} GiB available; lower model.dim or tokenizer.buckets"
        )
