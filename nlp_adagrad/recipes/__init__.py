"""One recipe per task: a function `(cfg, run_dir, writer=None) -> metrics` whose loop is
written out top to bottom on the shared run code (nlp_adagrad.run). `task=<name>` picks one,
imported when picked: a classification run does not load the word tasks' SciPy (0.7 s).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

TASKS = ("classify", "skipgram", "glove", "analytic")  # each is nlp_adagrad.recipes.<task>.<task>
# the tasks whose runs end with the eff_lr figure (nlp_adagrad.run.write_outputs); the
# experiments' analytic runs write their own trajectory files instead
DRAW_EFF_LR_FIGURE = ("classify", "skipgram", "glove")


def recipe(task: str) -> Callable:
    """The training function of `task`."""
    return getattr(importlib.import_module(f"nlp_adagrad.recipes.{task}"), task)
