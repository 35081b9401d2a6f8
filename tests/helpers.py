"""Helpers shared by the tests: the real `conf/` composed with overrides, the CLI and the
scripts in a subprocess, and a tiny two-class corpus."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from nlp_adagrad.config import CONF_DIR, Config, register_configs, to_config

REPO = Path(__file__).resolve().parent.parent
QUIET = ["trainer.progress=false"]

register_configs()


def make_config(*overrides: str) -> Config:
    """Compose the real conf/ as the CLI would, with overrides, and convert it."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return to_config(compose("config", overrides=[*QUIET, *overrides]))


def at_thread_counts(compute, counts=(1, 2, 2)) -> list:
    """compute() at each torch thread count, in order; the thread count restored after."""
    import torch

    previous, out = torch.get_num_threads(), []
    try:
        for threads in counts:
            torch.set_num_threads(threads)
            out.append(compute())
    finally:
        torch.set_num_threads(previous)
    return out


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300):
    """`python -m nlp_adagrad.train ARGS` in a subprocess: the user's view, exit code included."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "nlp_adagrad.train", *args, *QUIET],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_script(name: str, *args: str) -> list[str]:
    """`python scripts/NAME ARGS`; its standard output's lines (it must exit 0)."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / name), *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.splitlines()


def table_cells(line: str) -> list[str]:
    """The cells of one Markdown table row."""
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


SPORT = [
    "the match ended with a late goal",
    "the striker scored twice in the final",
    "fans cheered the winning team",
    "the coach praised the defence after the game",
]
MONEY = [
    "shares fell as the bank cut rates",
    "the market rallied on strong profits",
    "investors sold bonds after the report",
    "the firm reported higher quarterly sales",
]


def tiny_rows(repeat: int = 6) -> list[dict]:
    """A small two-class corpus with a clear signal, varied enough to split stratified."""
    rows = []
    for r in range(repeat):
        rows += [{"text": f"{t} {r}", "label": "sport"} for t in SPORT]
        rows += [{"text": f"{t} {r}", "label": "business"} for t in MONEY]
    return rows
