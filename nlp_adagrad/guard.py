"""The NaN guard: find the first non-finite loss, gradient or parameter after a step.

Parameters are checked where the step could have changed them: all of a dense parameter, only
the touched rows of a sparse table, so the check costs what the step cost. One host sync.
"""

from __future__ import annotations

import torch
from torch import nn

from nlp_adagrad.errors import UserError


class TrainingDiverged(UserError):
    """A loss, gradient or parameter became NaN or infinite."""

    exit_code = 3


@torch.no_grad()
def find_non_finite(loss: torch.Tensor, model: nn.Module) -> str | None:
    """Name of the first non-finite tensor among the loss, gradients and updated parameters."""
    checks = [("loss", loss.detach())]
    for name, p in model.named_parameters():
        grad = p.grad
        if grad is None:
            continue
        if grad.is_sparse:
            checks.append((f"gradient of {name}", grad._values()))
            checks.append((f"parameter {name}", p.index_select(0, grad._indices()[0])))
        else:
            checks.append((f"gradient of {name}", grad))
            checks.append((f"parameter {name}", p))
    finite = torch.stack([torch.isfinite(t).all() for _, t in checks])
    if bool(finite.all()):
        return None
    return checks[int((~finite).nonzero()[0, 0])][0]
