"""Checkpoints: written atomically, the last few kept, read with `weights_only=True`, and the
checks and optimizer loading that resuming from one needs.

A checkpoint is one dict: `model` and `optimizer` state dicts, `step`, `tokens`, the loss window
and RNG state that exact resume needs, and the resolved `config` as plain builtins. Files are
`checkpoints/step_000000123.pt`; `last.pt` is a hard link to the newest. Loading never runs
code from the file (a crafted pickle is refused), and a damaged file falls back to the previous
good one, saying so; it is never silently replaced by a fresh start.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from nlp_adagrad.config import Config, config_to_dict
from nlp_adagrad.errors import UserError

log = logging.getLogger(__name__)

LAST = "last.pt"
REQUIRED_KEYS = ("model", "optimizer", "step", "config")
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_save(path: Path, payload: dict[str, Any]) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`.

    A crash mid-write leaves the previous file intact, never a truncated one.
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
    _fsync_dir(path.parent)


def step_files(folder: Path) -> list[Path]:
    """step_*.pt files in `folder`, newest (highest step) first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_FILE.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def save_checkpoint(folder: Path, payload: dict[str, Any], keep: int) -> Path:
    """Save `step_<step>.pt`, point `last.pt` at it, and delete all but the `keep` newest."""
    path = folder / f"step_{payload['step']:09d}.pt"
    atomic_save(path, payload)
    tmp_link = folder / f".{LAST}.link"
    tmp_link.unlink(missing_ok=True)
    os.link(path, tmp_link)
    os.replace(tmp_link, folder / LAST)
    _fsync_dir(folder)
    for old in step_files(folder)[keep:]:
        old.unlink()
    return path


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load one checkpoint with weights_only=True; UserError naming the file if it is bad."""
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing
            warnings.simplefilter("ignore", UserWarning)
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        if "Weights only load failed" in str(e):
            reason = (
                "it holds Python objects beyond tensors, which loading with weights_only=True "
                "refuses (such a file can run code); it is not an nlp_adagrad checkpoint"
            )
        else:
            reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load checkpoint {path}: {reason}") from None
    if not isinstance(payload, dict) or any(k not in payload for k in REQUIRED_KEYS):
        raise UserError(f"{path} is not an nlp_adagrad checkpoint (needs {REQUIRED_KEYS})")
    return payload


def resume_candidates(resume: str) -> list[Path]:
    """Files to try, best first: a run dir's last.pt then its older steps; or the file given,
    then the older step files beside it."""
    path = Path(resume).expanduser()
    folder = path / "checkpoints" if path.is_dir() else path.parent
    if path.is_dir():
        first = folder / LAST
    elif path.is_file():
        first = path
    else:
        raise UserError(
            f"trainer.resume={resume}: no such run dir or checkpoint file; "
            f"give a run dir with checkpoints/{LAST} or a .pt file"
        )
    match = _STEP_FILE.match(first.name)
    older = [p for p in step_files(folder) if not match or p.name < first.name]
    candidates = [first] if first.exists() else []
    candidates += [p for p in older if not (first.exists() and p.samefile(first))]
    if not candidates:
        raise UserError(f"trainer.resume={resume}: no checkpoint found in {folder}")
    return candidates


def load_for_resume(resume: str, map_location: str | torch.device) -> tuple[Path, dict]:
    """The newest loadable checkpoint for `trainer.resume`, warning about each damaged one
    that an older one replaces."""
    candidates = resume_candidates(resume)
    for k, path in enumerate(candidates):
        try:
            payload = load_checkpoint(path, map_location)
        except UserError as e:
            if k + 1 == len(candidates):
                more = f" (nor do {k} newer ones)" if k else ""
                raise UserError(
                    f"no loadable checkpoint for trainer.resume={resume}: {e}{more}"
                ) from None
            log.warning("%s; trying the previous checkpoint", e)
            continue
        if k:
            log.warning("resuming from %s, the newest checkpoint that loads", path)
        return path, payload
    raise AssertionError("resume_candidates never returns an empty list")


def check_resume_compatible(state: dict, cfg: Config, model: torch.nn.Module, path: Path) -> None:
    """Refuse, in one line, a checkpoint this config cannot continue (another optimizer, model
    or table shape); warn about data, tokenizer and model settings that differ."""
    then = state["config"]
    then_task = (then.get("task") or {}).get("name", "classify")  # runs from before `task`
    if then_task != cfg.task.name:
        raise UserError(
            f"{path} was trained with task={then_task}, not task={cfg.task.name}; "
            f"resume with task={then_task}"
        )
    if then["optim"]["name"] != cfg.optim.name:
        raise UserError(
            f"{path} was trained with optim={then['optim']['name']}, whose state "
            f"optim={cfg.optim.name} cannot continue; resume with optim={then['optim']['name']} "
            f"(its keys, optim.lr included, may change)"
        )
    saved, built = state["model"], model.state_dict()
    for name in model.sparse_tables():
        key = f"{name}.weight"
        table = tuple(saved[key].shape) if key in saved else None
        if then["model"]["name"] == cfg.model.name and table not in (None, tuple(built[key].shape)):
            raise UserError(
                f"{path} holds a token table of shape {table} but this config builds "
                f"{tuple(built[key].shape)}; resume with the run's own data, "
                f"tokenizer and model config"
            )
    if set(saved) != set(built) or any(saved[k].shape != built[k].shape for k in saved):
        dim = f" model.dim={then['model']['dim']}" if "dim" in then["model"] else ""
        trained = f"model={then['model']['name']}{dim}"
        raise UserError(
            f"{path} holds a {trained} that this config's model={cfg.model.name} cannot load; "
            f"resume with {trained}"
        )
    now = config_to_dict(cfg)
    for section in ("data", "tokenizer", "model"):
        before = dict(then.get(section) or {})
        if section == "tokenizer":  # where ids come from, not what they are
            before.pop("cache", None)
            now[section] = {k: v for k, v in now[section].items() if k != "cache"}
        if before != now[section]:
            log.warning(
                "resuming with a different %s config than %s was trained with", section, path
            )


def resume_optimizer(optimizer: torch.optim.Optimizer, saved: dict, step: int) -> None:
    """Load the optimizer's state, keeping this config's hyperparameters: `trainer.resume=...
    optim.lr=50` trains on at 50 (torch's load_state_dict would restore the old values while
    config.yaml said 50). Each changed value is logged."""
    configured = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, wanted in zip(optimizer.param_groups, configured):
        for key, value in wanted.items():
            if group.get(key) != value:
                log.info(
                    "resume: optim.%s %s -> %s from step %d on (this run's config)",
                    key,
                    group.get(key),
                    value,
                    step + 1,
                )
                group[key] = value
