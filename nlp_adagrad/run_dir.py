"""A run's folder: claiming it, refusing one that is taken before Hydra writes into it, its
JSON files, and leaving nothing behind when bad input stops a run before it trains.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import sys
from pathlib import Path

from nlp_adagrad.errors import UserError

RUN_LOCK = ".nlp_adagrad-run"


def refuse_run_dir_arguments(arguments: list[str]) -> str | None:
    """Why `hydra.run.dir=` / `hydra.sweep.dir=` cannot be used, checked before Hydra makes the
    folder and writes `.hydra/` into it (a file in the way, another run's folder), or None."""
    for argument in arguments:
        key, _, value = argument.partition("=")
        if key in ("hydra.run.dir", "hydra.sweep.dir") and Path(value).is_file():
            return f"{key}={value} is a file; name a folder (new or empty)"
        if key == "hydra.run.dir" and (Path(value) / RUN_LOCK).exists():
            return (
                f"{value} already holds a run; pick a new hydra.run.dir (the default never repeats)"
            )
    return None


def claim_run_dir(run_dir: Path) -> None:
    """Refuse a run dir another run holds, so no run's files are overwritten by another."""
    try:
        os.close(os.open(run_dir / RUN_LOCK, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        raise UserError(
            f"{run_dir} already holds a run; pick a new hydra.run.dir (the default never repeats)"
        ) from None


def tensorboard_command() -> str:
    """`tensorboard` if that name finds this environment's, else its path (a venv that is not
    activated: a bare `tensorboard` would fail or be another install's)."""
    ours = Path(sys.executable).parent / "tensorboard"
    if not ours.exists() or shutil.which("tensorboard") == str(ours):
        return "tensorboard"
    return str(ours)


def detach_file_logs(run_dir: Path) -> None:
    """Stop the log handlers Hydra opened on files in `run_dir` (its train.log)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).is_relative_to(
            run_dir.resolve()
        ):
            root.removeHandler(handler)
            handler.close()


SCAFFOLDING = (".hydra", "config.yaml", "train.log", "tokenizer.json", "tb", RUN_LOCK)


def discard_unstarted_run(run_dir: Path) -> None:
    """Remove the folder of a run refused before it trained (the error is on the console), so
    outputs/ keeps no run that holds only its config and log. A run with checkpoints, or a
    folder holding anything else, is left as it is."""
    if (run_dir / "checkpoints").exists():
        return
    detach_file_logs(run_dir)
    for name in SCAFFOLDING:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty: something of the user's is in it
        run_dir.rmdir()


def write_json(path: Path, values: dict) -> None:
    clean = {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()
    }
    path.write_text(json.dumps(clean, indent=2, sort_keys=True) + "\n")
