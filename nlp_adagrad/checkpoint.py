"""Checkpoints: written atomically, read with `weights_only=True` so loading never runs code.

A checkpoint is one dict: `model` and `optimizer` state dicts, `step`, the data position
(`epoch`, `batch_in_epoch`), `tokens` seen, and the resolved `config` as plain builtins.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from nlp_adagrad.errors import UserError

LAST = "last.pt"


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`.

    A crash mid-write leaves the previous checkpoint intact, never a truncated one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def resolve_checkpoint(path_str: str) -> Path:
    """A checkpoint file, or the last checkpoint of a run dir."""
    path = Path(path_str).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / LAST
    if not path.is_file():
        raise UserError(
            f"trainer.resume={path_str}: no checkpoint at {path}; "
            f"give a run dir with checkpoints/{LAST} or a .pt file"
        )
    return path


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise UserError(f"cannot load checkpoint {path}: {type(e).__name__}: {e}") from None
    missing = [k for k in ("model", "optimizer", "step", "config") if k not in payload]
    if missing:
        raise UserError(f"{path} is not an nlp_adagrad checkpoint (missing {missing})")
    return payload
